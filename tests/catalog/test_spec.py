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
