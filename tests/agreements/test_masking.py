"""Masking (脱敏) and minimization: every rule, projection, arrays, documents, properties."""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao.agreements.document import Masking, MaskRule
from qiao.agreements.masking import (
    COMPOUND_SURNAMES,
    RecordsNotFound,
    compile_masking,
    pointer_tokens,
    pseudonym_key,
)

KEY = b"k" * 32
CITIZEN_ID = "440305199001011234"


def masker(fields: tuple[str, ...] | None, **rules: MaskRule | Masking) -> Any:
    masking = {
        path.replace("__", "."): r if isinstance(r, Masking) else Masking(rule=r)
        for path, r in rules.items()
    }
    return compile_masking(fields, masking, KEY)


def mask(rule: MaskRule, value: Any, **params: int | str) -> Any:
    """One value through one rule, as the field "v" of a record."""
    m = compile_masking(None, {"v": Masking(rule=rule, params=params)}, KEY)
    out = m.apply({"v": value})
    return out.get("v", "<removed>")


# --- the rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (CITIZEN_ID, "440305********1234"),
        ("11010519491231002X", "110105********002X"),
        ("440305900101123", "440305*****1123"),  # the old 15-digit form
        ("4403051990", "**********"),  # too short: nothing survives
    ],
)
def test_citizen_id(value: str, expected: str) -> None:
    assert mask(MaskRule.CITIZEN_ID, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("13812345678", "138****5678"),
        ("138-1234-5678", "138****5678"),
        ("138 1234 5678", "138****5678"),
        ("1381234", "*******"),
    ],
)
def test_mobile(value: str, expected: str) -> None:
    assert mask(MaskRule.MOBILE, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("张三丰", "张**"),
        ("李四", "李*"),
        ("欧阳娜娜", "欧阳**"),
        ("司马光", "司马*"),
        ("诸葛亮", "诸葛*"),
        ("欧阳", "欧*"),  # two characters: 欧 the surname, 阳 the given name
        ("买买提·艾力", "买*****"),
        ("王", "*"),
    ],
)
def test_name(value: str, expected: str) -> None:
    assert mask(MaskRule.NAME, value) == expected


def test_all_compound_surnames_keep_two_characters() -> None:
    assert len(COMPOUND_SURNAMES) == 17
    for surname in COMPOUND_SURNAMES:
        assert mask(MaskRule.NAME, surname + "小明") == surname + "**"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("广东省桥城市南山区科技园路1号", "广东省桥城市南山区****"),
        ("北京市朝阳区建国路88号", "北京市朝阳区****"),
        ("内蒙古自治区呼和浩特市新城区中山东路1号", "内蒙古自治区呼和浩特市新城区****"),
        ("内蒙古自治区阿拉善盟阿拉善左旗巴彦浩特镇", "内蒙古自治区****"),  # no 市: first 区
        ("云南省昆明市富民县永定街道", "云南省昆明市富民县****"),
        ("河北省石家庄市市辖区", "河北省石家庄市市辖区****"),
        ("朝阳区建国路88号", "朝阳区****"),
        ("桥城市科技园路1号", "桥城市科技园****"),  # no district: the first 6
        ("科技园路1号B座旗舰店", "科技园路1号****"),  # a 旗 after a house number is no division
        ("科技园路", "****"),
    ],
)
def test_address(value: str, expected: str) -> None:
    assert mask(MaskRule.ADDRESS, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("粤B12345", "粤B****5"),
        ("粤BD12345", "粤B*****5"),  # new-energy plate, 8 characters
        ("粤B·12345", "粤B****5"),
        ("粤B1234警", "粤B****警"),
        ("粤B12", "****"),
    ],
)
def test_plate(value: str, expected: str) -> None:
    assert mask(MaskRule.PLATE, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6222021234567890123", "622202*********0123"),
        ("6222 0212 3456 7890 123", "622202*********0123"),
        ("6222-0212-3456-7890", "622202******7890"),
        ("6222021234", "**********"),
    ],
)
def test_bank_card(value: str, expected: str) -> None:
    assert mask(MaskRule.BANK_CARD, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("zhang.san@example.cn", "z***@example.cn"),
        ("张三@政务.中国", "张***@政务.中国"),
        ("no-at-sign", "**********"),
        ("@example.cn", "***********"),
        ("zhang@", "******"),
    ],
)
def test_email(value: str, expected: str) -> None:
    assert mask(MaskRule.EMAIL, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-01-01", "1990"),
        ("1990-01-01T08:00:00+08:00", "1990"),
        (CITIZEN_ID, "1990"),
        ("11010519491231002X", "1949"),
        ("440305900101123", "1990"),
        ("1990", "1990"),  # already a year
        ("01/01/1990", "**********"),
        (19900101, None),
    ],
)
def test_birth_year(value: Any, expected: Any) -> None:
    assert mask(MaskRule.BIRTH_YEAR, value) == expected


@pytest.mark.parametrize(
    ("age", "width", "expected"),
    [
        (34, 10, "30-39"),
        (0, 10, "0-9"),
        (9, 10, "0-9"),
        (99, 10, "90-99"),
        (100, 10, "100+"),
        (117, 10, "100+"),
        (34, 5, "30-34"),
        (95, 15, "90-99"),
        (-1, 10, None),
        (True, 10, None),
        (34.5, 10, None),
        ("34", 10, "**"),
    ],
)
def test_age_band(age: Any, width: int, expected: Any) -> None:
    assert mask(MaskRule.AGE_BAND, age, width=width) == expected


def test_age_band_default_width_and_string_width() -> None:
    assert mask(MaskRule.AGE_BAND, 34) == "30-39"
    assert mask(MaskRule.AGE_BAND, 34, width="20") == "20-39"


@pytest.mark.parametrize("width", [0, -5, "ten"])
def test_age_band_with_a_meaningless_width_keeps_nothing(width: int | str) -> None:
    assert mask(MaskRule.AGE_BAND, 34, width=width) is None


def test_suppress_removes_the_key() -> None:
    m = masker(("a", "b"), b=MaskRule.SUPPRESS)
    assert m.apply({"a": 1, "b": 2}) == {"a": 1}
    assert mask(MaskRule.SUPPRESS, None) == "<removed>"


PSEUDONYM = re.compile(r"^ps_[a-z2-7]{24}$")


def test_pseudonym_is_stable_per_key_and_differs_across_keys() -> None:
    rules = {"id": Masking(rule=MaskRule.PSEUDONYM)}
    one = compile_masking(None, rules, b"agreement one").apply({"id": CITIZEN_ID})["id"]
    again = compile_masking(None, rules, b"agreement one").apply({"id": CITIZEN_ID})["id"]
    other = compile_masking(None, rules, b"agreement two").apply({"id": CITIZEN_ID})["id"]
    assert PSEUDONYM.match(one), one
    assert one == again
    assert one != other
    assert CITIZEN_ID not in one


def test_pseudonym_key_is_per_consumer_provider_and_resource() -> None:
    """Not per agreement: a renewal (a new agreement id) keeps the pseudonyms."""
    secret = b"s" * 32
    parties = ("91350100MA2XXXXX1A", "11350100MB0XXXXX2B")
    key = pseudonym_key(secret, *parties, "vehicle-violations")
    assert len(key) == 32
    assert key == pseudonym_key(secret, *parties, "vehicle-violations")
    others = {
        pseudonym_key(secret, parties[1], parties[0], "vehicle-violations"),
        pseudonym_key(secret, *parties, "vehicle-owners"),
        pseudonym_key(b"t" * 32, *parties, "vehicle-violations"),
        # No ambiguity where one name ends and the next begins.
        pseudonym_key(secret, parties[0], parties[1] + "v", "ehicle-violations"),
    }
    assert key not in others and len(others) == 4
    expected = hmac.new(
        secret,
        b'["qiao-pseudonym/1","91350100MA2XXXXX1A","11350100MB0XXXXX2B","vehicle-violations"]',
        hashlib.sha256,
    ).digest()
    assert key == expected


def test_pseudonym_depends_on_value_type_and_field() -> None:
    m = masker(None, a=MaskRule.PSEUDONYM, b=MaskRule.PSEUDONYM)
    out = m.apply({"a": "1", "b": "1"})
    assert out["a"] != out["b"]  # the field path is in the HMAC
    assert m.apply({"a": 1})["a"] != out["a"]  # 1 and "1" differ
    assert PSEUDONYM.match(m.apply({"a": {"x": [1, 2]}})["a"])


def test_pseudonym_vector() -> None:
    """HMAC-SHA256(key, path NUL RFC 8785 value), first 15 bytes, base32 lower."""
    import base64
    import hashlib
    import hmac

    mac = hmac.new(KEY, b'v\x00"' + CITIZEN_ID.encode() + b'"', hashlib.sha256).digest()
    expected = "ps_" + base64.b32encode(mac[:15]).decode().lower()
    assert mask(MaskRule.PSEUDONYM, CITIZEN_ID) == expected


@pytest.mark.parametrize(
    "rule",
    [r for r in MaskRule if r not in (MaskRule.SUPPRESS, MaskRule.PSEUDONYM, MaskRule.AGE_BAND)],
)
@pytest.mark.parametrize(
    ("value", "expected"),
    [(12345678901, None), (True, None), ({"a": "13812345678"}, None), (["x"], None), (1.5, None)],
)
def test_unmaskable_values_keep_nothing(rule: MaskRule, value: Any, expected: Any) -> None:
    assert mask(rule, value) == expected


@pytest.mark.parametrize("rule", list(MaskRule))
def test_null_stays_null(rule: MaskRule) -> None:
    expected = "<removed>" if rule is MaskRule.SUPPRESS else None
    assert mask(rule, None) == expected


# --- projection, nesting, arrays --------------------------------------------------------

VIOLATION: dict[str, Any] = {
    "plate": "粤B12345",
    "code": "1625",
    "owner": {"name": "张三丰", "mobile": "13812345678", "id": CITIZEN_ID},
    "internal": "backend only",
}


def test_projection_keeps_listed_fields_and_nested_sub_fields() -> None:
    m = masker(("plate", "owner.name"))
    assert m.active
    assert m.apply(VIOLATION) == {"plate": "粤B12345", "owner": {"name": "张三丰"}}


def test_projection_of_a_whole_object_keeps_its_sub_tree() -> None:
    m = masker(("owner",), owner__mobile=MaskRule.MOBILE)
    assert m.apply(VIOLATION) == {
        "owner": {"name": "张三丰", "mobile": "138****5678", "id": CITIZEN_ID}
    }


def test_projection_drops_keys_a_backend_adds() -> None:
    m = masker(("plate", "code"), plate=MaskRule.PLATE)
    assert m.apply({**VIOLATION, "new_field": "secret"}) == {"plate": "粤B****5", "code": "1625"}


def test_missing_fields_are_simply_absent() -> None:
    m = masker(("plate", "owner.name"), owner__name=MaskRule.NAME)
    assert m.apply({"code": "1"}) == {}
    assert m.apply({"owner": {"mobile": "x"}}) == {"owner": {}}


def test_no_projection_keeps_every_field_and_masks() -> None:
    m = masker(None, owner__id=MaskRule.CITIZEN_ID, plate=MaskRule.PLATE)
    out = m.apply(VIOLATION)
    owner = {"name": "张三丰", "mobile": "13812345678", "id": "440305********1234"}
    assert out == {**VIOLATION, "plate": "粤B****5", "owner": owner}


def test_inactive_masker_passes_the_record_untouched() -> None:
    m = compile_masking(None, {}, KEY)
    assert not m.active
    assert m.apply(VIOLATION) is VIOLATION
    assert m.apply_document([VIOLATION], "") == [VIOLATION]


def test_empty_projection_keeps_nothing() -> None:
    assert compile_masking((), {}, KEY).apply(VIOLATION) == {}


def test_arrays_of_objects_and_arrays_in_arrays() -> None:
    m = masker(
        ("case", "people[].name", "people[].contacts[].mobile"),
        **{"people[].name": MaskRule.NAME, "people[].contacts[].mobile": MaskRule.MOBILE},
    )
    record = {
        "case": "A1",
        "people": [
            {
                "name": "欧阳娜娜",
                "age": 30,
                "contacts": [{"mobile": "13812345678", "kind": "home"}],
            },
            {"name": "李四", "contacts": []},
            "not an object",
        ],
    }
    assert m.apply(record) == {
        "case": "A1",
        "people": [
            {"name": "欧阳**", "contacts": [{"mobile": "138****5678"}]},
            {"name": "李*", "contacts": []},
            None,
        ],
    }


def test_masking_each_element_of_an_array_of_strings() -> None:
    m = compile_masking(("mobiles",), {"mobiles[]": Masking(rule=MaskRule.MOBILE)}, KEY)
    out = m.apply({"mobiles": ["13812345678", None, "13900001111"]})
    assert out == {"mobiles": ["138****5678", None, "139****1111"]}


def test_a_rule_on_an_array_without_brackets_keeps_nothing() -> None:
    m = masker(None, mobiles=MaskRule.MOBILE)
    assert m.apply({"mobiles": ["13812345678"]}) == {"mobiles": None}


def test_an_object_path_over_an_array_masks_each_element() -> None:
    """owner.mobile where owner is an array: each element's mobile is masked, never leaked."""
    m = masker(("owner",), owner__mobile=MaskRule.MOBILE)
    out = m.apply({"owner": [{"mobile": "13812345678"}, {"mobile": "13900001111"}]})
    assert out == {"owner": [{"mobile": "138****5678"}, {"mobile": "139****1111"}]}


def test_a_scalar_where_sub_fields_were_agreed_is_dropped() -> None:
    m = masker(("owner.name",))
    assert m.apply({"owner": "张三丰"}) == {}


def test_masking_outside_the_projection_does_not_add_the_field() -> None:
    m = masker(("plate",), owner__name=MaskRule.NAME)
    assert m.apply(VIOLATION) == {"plate": "粤B12345"}


def test_two_rules_for_one_field_suppress_it() -> None:
    m = compile_masking(
        None,
        {"tags": Masking(rule=MaskRule.MOBILE), "tags[]": Masking(rule=MaskRule.NAME)},
        KEY,
    )
    assert m.apply({"tags": ["a"], "x": 1}) == {"x": 1}


def test_apply_does_not_modify_its_argument() -> None:
    m = masker(("owner",), owner__name=MaskRule.NAME, owner__id=MaskRule.SUPPRESS)
    record = copy.deepcopy(VIOLATION)
    m.apply(record)
    assert record == VIOLATION


@pytest.mark.parametrize("record", ["粤B12345", ["粤B12345"], 440305, True, None])
def test_a_non_object_record_becomes_null(record: Any) -> None:
    """Nothing of a record that has no fields was agreed: it cannot leave, in any shape."""
    assert masker(("plate",)).apply(record) is None
    assert masker(None, plate=MaskRule.PLATE).apply(record) is None
    assert compile_masking(None, {}, KEY).apply(record) == record  # no masking: untouched


# --- documents (RFC 6901 pointers) ------------------------------------------------------


def test_document_root_is_one_record_or_a_list() -> None:
    m = masker(("plate",), plate=MaskRule.PLATE)
    assert m.apply_document(VIOLATION, "") == {"plate": "粤B****5"}
    assert m.apply_document([VIOLATION, VIOLATION], "") == [{"plate": "粤B****5"}] * 2


def test_document_records_at_a_pointer_keep_the_rest() -> None:
    m = masker(("plate",), plate=MaskRule.PLATE)
    document = {"total": 2, "violations": [VIOLATION, VIOLATION], "next": None}
    original = copy.deepcopy(document)
    out = m.apply_document(document, "/violations")
    assert out == {"total": 2, "violations": [{"plate": "粤B****5"}] * 2, "next": None}
    assert document == original


def test_document_pointer_into_arrays_and_objects() -> None:
    m = masker(("plate",))
    document = {"pages": [{"items": VIOLATION}, {"items": VIOLATION}, 7]}
    out = m.apply_document(document, "/pages/1/items")
    # The other page is not where the records are: it keeps its place but not its content.
    assert out == {"pages": [None, {"items": {"plate": "粤B12345"}}, 7]}


@pytest.mark.parametrize(
    "pointer", ["/missing", "/violations/x", "/total/0", "violations", "/pages/01", "/pages/-"]
)
def test_document_pointer_that_does_not_resolve_is_refused(pointer: str) -> None:
    m = masker(("plate",))
    document = {"total": 1, "violations": [VIOLATION], "pages": [VIOLATION, VIOLATION]}
    with pytest.raises(RecordsNotFound) as refused:
        m.apply_document(document, pointer)
    assert refused.value.pointer == pointer
    # Without masking there is nothing to find: the document passes as it is.
    assert compile_masking(None, {}, KEY).apply_document(document, pointer) is document


def test_document_envelope_keeps_scalars_and_drops_containers() -> None:
    """Totals and cursors stay; an object or array beside the records could hold records
    that no projection has seen (a "related" list, a "query" echo), so it goes."""
    m = masker(("plate",), plate=MaskRule.PLATE)
    document = {
        "total": 2,
        "next": "cursor-2",
        "done": False,
        "none": None,
        "related": [VIOLATION],
        "query": {"plate": "粤B12345"},
        "data": {"page": 1, "extra": {"owner": "张三丰"}, "violations": [VIOLATION]},
    }
    out = m.apply_document(document, "/data/violations")
    assert out == {
        "total": 2,
        "next": "cursor-2",
        "done": False,
        "none": None,
        "data": {"page": 1, "violations": [{"plate": "粤B****5"}]},
    }


def test_document_envelope_members_named_like_record_fields_are_those_fields() -> None:
    m = masker(("plate", "owner.name"), plate=MaskRule.PLATE, owner__name=MaskRule.NAME)
    fields = frozenset({"plate", "owner", "mobile"})
    document = {
        "plate": "粤B12345",  # projected: masked by its rule
        "mobile": "13812345678",  # not projected: dropped
        "owner": {"name": "张三丰", "mobile": "13812345678"},  # projected in part
        "total": 1,
        "violations": [VIOLATION],
    }
    out = m.apply_document(document, "/violations", fields)
    assert out["plate"] == "粤B****5" and out["owner"] == {"name": "张**"}
    assert "mobile" not in out and out["total"] == 1


def test_document_records_that_are_not_objects_become_null() -> None:
    m = masker(("plate",))
    document = {"violations": [VIOLATION, "粤B12345", [VIOLATION], 3]}
    assert m.apply_document(document, "/violations") == {
        "violations": [{"plate": "粤B12345"}, None, None, None]
    }
    assert m.apply_document("粤B12345", "") is None
    assert m.apply_document({"violations": "粤B12345"}, "/violations") == {"violations": None}


def test_document_pointer_escapes() -> None:
    """RFC 6901 §4: ~1 is "/", ~0 is "~", decoded in that order ("~01" is "~1")."""
    m = masker(("plate",))
    document = {"a/b": VIOLATION, "m~n": [VIOLATION], "~1": VIOLATION}
    masked = {"plate": "粤B12345"}
    assert m.apply_document(document, "/a~1b")["a/b"] == masked
    assert m.apply_document(document, "/m~0n")["m~n"] == [masked]
    assert m.apply_document(document, "/~01")["~1"] == masked
    with pytest.raises(RecordsNotFound):
        m.apply_document(document, "/a~2b")  # not an escape: unresolved


def test_pointer_tokens() -> None:
    assert pointer_tokens("") == []
    assert pointer_tokens("/") == [""]
    assert pointer_tokens("/a~1b/~0/c") == ["a/b", "~", "c"]
    assert pointer_tokens("a") is None


def test_document_scalar_at_pointer_is_not_a_record() -> None:
    m = masker(("plate",))
    assert m.apply_document({"total": 3}, "/total") == {"total": None}


# --- properties -------------------------------------------------------------------------

NAMES = st.sampled_from(["plate", "owner", "name", "mobile", "people", "id", "x"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(NAMES | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=12,
)
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(".".join)
RULES = st.sampled_from(list(MaskRule)).map(lambda r: Masking(rule=r))


@settings(max_examples=300)
@given(
    record=st.dictionaries(NAMES, JSON, max_size=4),
    fields=st.lists(PATHS, max_size=4).map(tuple),
)
def test_output_keys_are_within_the_projection(record: dict[str, Any], fields: Any) -> None:
    out = compile_masking(fields, {}, KEY).apply(record)
    top = {p.split(".")[0] for p in fields}
    assert set(out) <= top


@settings(max_examples=300)
@given(
    document=JSON,
    fields=st.none() | st.lists(PATHS, max_size=4).map(tuple),
    masking=st.dictionaries(PATHS | PATHS.map(lambda p: p + "[]"), RULES, max_size=4),
    pointer=st.sampled_from(["", "/owner", "/people/0", "/x~1y", "/nope"]),
)
def test_apply_never_raises_on_arbitrary_json(
    document: Any, fields: Any, masking: dict[str, Masking], pointer: str
) -> None:
    m = compile_masking(fields, masking, KEY)
    m.apply(document)
    try:
        out = m.apply_document(document, pointer, frozenset({"plate", "x"}))
    except RecordsNotFound:
        assert not _resolves(document, pointer_tokens(pointer) or [])
        return
    assert not m.active or _resolves(document, pointer_tokens(pointer) or [])
    if m.active and isinstance(out, dict) and pointer:
        # The envelope keeps only scalars beside the path to the records.
        head = pointer_tokens(pointer)[0]  # type: ignore[index]
        assert all(
            not isinstance(v, (dict, list)) or k in (head, "plate", "x") for k, v in out.items()
        )


def _resolves(document: Any, tokens: list[str]) -> bool:
    for token in tokens:
        if isinstance(document, dict) and token in document:
            document = document[token]
        elif isinstance(document, list) and token.isdigit() and int(token) < len(document):
            if token != str(int(token)):
                return False
            document = document[int(token)]
        else:
            return False
    return True


@given(
    body=st.text(alphabet="0123456789", min_size=17, max_size=17),
    check=st.sampled_from("0123456789X"),
)
def test_masked_citizen_id_keeps_length_and_six_plus_four(body: str, check: str) -> None:
    value = body + check
    masked = mask(MaskRule.CITIZEN_ID, value)
    assert len(masked) == len(value) == 18
    assert masked[:6] == value[:6] and masked[-4:] == value[-4:]
    assert masked[6:14] == "*" * 8


def _visible(value: str) -> int:
    return sum(c != "*" for c in value)


@given(value=st.text(min_size=0, max_size=30))
def test_masking_citizen_id_and_mobile_is_idempotent(value: str) -> None:
    for rule in (MaskRule.CITIZEN_ID, MaskRule.MOBILE):
        once = mask(rule, value)
        twice = mask(rule, once)
        assert _visible(twice) == _visible(once)
        assert _visible(once) <= 7 if rule is MaskRule.MOBILE else _visible(once) <= 10


@given(value=st.text(alphabet=st.characters(blacklist_characters="*"), max_size=30))
def test_rules_show_at_most_what_they_keep(value: str) -> None:
    """However odd the string, no rule shows more characters than it is meant to keep."""
    limits = {MaskRule.NAME: 2, MaskRule.PLATE: 3, MaskRule.MOBILE: 7, MaskRule.CITIZEN_ID: 10}
    for rule, limit in limits.items():
        out = mask(rule, value)
        assert isinstance(out, str)
        assert _visible(out) <= limit


def test_dict_and_list_subclasses_are_masked_too() -> None:
    from collections import OrderedDict

    m = masker(None, owner__mobile=MaskRule.MOBILE)
    record = OrderedDict(owner=OrderedDict(mobile="13812345678"))
    assert m.apply(record) == {"owner": {"mobile": "138****5678"}}
