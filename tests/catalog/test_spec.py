import pytest
from pydantic import ValidationError

from qiao.catalog.spec import (
    CodeList,
    DataElement,
    Item,
    Openness,
    ResourceSpec,
    SharingType,
    label_zh,
    parse_choice,
)

ORG = "91350100M000100Y43"


def _resource(**kw: object) -> ResourceSpec:
    base: dict[str, object] = {
        "code": "vehicle-violations",
        "name": "机动车违法记录",
        "provider": ORG,
        "abstract": "交通违法记录",
        "classification": "departmental",
        "items": [Item(field="plate", name="号牌号码", element="DE0003")],
        "sharing_type": "unconditional",
    }
    base.update(kw)
    return ResourceSpec.model_validate(base)


def test_conditional_and_non_shared_resources_need_a_legal_basis() -> None:
    with pytest.raises(ValidationError, match="legal basis"):
        _resource(sharing_type="conditional", sharing_conditions="仅用于执法")
    with pytest.raises(ValidationError, match="legal basis"):
        _resource(sharing_type="none")
    with pytest.raises(ValidationError, match="sharing conditions"):
        _resource(sharing_type="conditional", legal_basis="《道路交通安全法》")
    ok = _resource(sharing_type="none", legal_basis="《保守国家秘密法》")
    assert ok.sharing_type is SharingType.NONE


def test_item_fields_are_unique() -> None:
    item = Item(field="plate", name="号牌号码", element="DE0003")
    with pytest.raises(ValidationError, match="twice"):
        _resource(items=[item, item])


def test_choices_parse_from_codes_and_chinese_labels() -> None:
    assert parse_choice(SharingType, "有条件共享") is SharingType.CONDITIONAL
    assert parse_choice(Openness, "有条件开放") is Openness.CONDITIONAL
    assert label_zh(SharingType.CONDITIONAL) == "有条件共享"
    assert label_zh(Openness.CONDITIONAL) == "有条件开放"
    with pytest.raises(ValueError, match="unconditional"):
        parse_choice(SharingType, "随便共享")


def test_data_elements_are_consistent() -> None:
    with pytest.raises(ValidationError, match="string"):
        DataElement(identifier="DE1", name="年龄", definition="d", type="integer", max_length=3)
    with pytest.raises(ValidationError, match="regular expression"):
        DataElement(identifier="DE1", name="x", definition="d", type="string", pattern="[")
    with pytest.raises(ValidationError, match="twice"):
        CodeList(
            identifier="GB/T 2261.1",
            name="性别",
            codes=[{"value": "1", "label": "男"}, {"value": "1", "label": "女"}],
        )


def test_streams_go_with_the_events_sharing_method_and_a_required_partition_key() -> None:
    stream = {"partition_key": "plate", "retention_hours": 72}
    r = _resource(sharing_methods=["service", "events"], stream=stream)
    assert r.stream is not None and r.stream.partition_key == "plate"
    assert _resource(sharing_methods=["events"], stream={"partition_key": "plate"}).stream
    for bad, why in (
        ({"sharing_methods": ["events"]}, "declares its stream"),
        ({"stream": stream}, "only with the sharing method events"),
        ({"sharing_methods": ["events"], "stream": {"partition_key": "nope"}}, "required item"),
        (
            {
                "sharing_methods": ["events"],
                "stream": stream,
                "items": [Item(field="plate", name="号牌号码", element="DE0003", required=False)],
            },
            "required item",
        ),
        (
            {"sharing_methods": ["events"], "stream": {**stream, "retention_hours": 0}},
            "greater than or equal to 1",
        ),
    ):
        with pytest.raises(ValidationError, match=why):
            _resource(**bad)


def test_a_version_without_a_stream_keeps_its_bytes() -> None:
    """Versions published before streams existed hash the same (no "stream": null)."""
    from qiao.catalog.service import _version_document

    plain = _version_document(_resource(), 1)
    assert b'"stream"' not in plain
    streamed = _version_document(
        _resource(sharing_methods=["events"], stream={"partition_key": "plate"}), 1
    )
    assert b'"stream":{"partition_key":"plate","retention_hours":168}' in streamed
