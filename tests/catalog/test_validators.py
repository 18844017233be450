from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao.catalog.validators import (
    PLATE_PROVINCES,
    USCC_ALPHABET,
    InvalidCode,
    citizen_id_birth_date,
    citizen_id_check_char,
    citizen_id_sex,
    division_level,
    division_name,
    is_new_energy_plate,
    is_valid_citizen_id,
    is_valid_date,
    is_valid_datetime,
    is_valid_division_code,
    is_valid_mobile,
    is_valid_plate,
    is_valid_time,
    is_valid_uscc,
    org_code_check_char,
    uscc_check_char,
    validate_citizen_id,
    validate_date,
    validate_datetime,
    validate_division_code,
    validate_mobile,
    validate_plate,
    validate_time,
    validate_uscc,
)

TODAY = date(2026, 11, 29)
PROVINCE_RANGES = ((11, 15), (21, 23), (31, 37), (41, 46), (50, 54), (61, 65), (71, 71), (81, 82))
PROVINCES = [str(n) for lo, hi in PROVINCE_RANGES for n in range(lo, hi + 1)]
DIGITS = "0123456789"
PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def rule_of(check: Callable[[str], object], value: str) -> str:
    with pytest.raises(InvalidCode) as e:
        check(value)
    assert str(e.value) == e.value.message
    return e.value.rule


def substitutions(value: str, alphabet_at: list[str]) -> list[str]:
    """Every string that differs from ``value`` in exactly one character, within the alphabet
    allowed at that position."""
    return [
        value[:i] + ch + value[i + 1 :]
        for i, alphabet in enumerate(alphabet_at)
        for ch in alphabet
        if ch != value[i]
    ]


# --- USCC -----------------------------------------------------------------------------------

usccs = st.text(USCC_ALPHABET, min_size=17, max_size=17).map(lambda s: s + uscc_check_char(s))


@pytest.mark.parametrize("code", ["91350100M000100Y43", "91110000802100433B"])
def test_published_usccs_are_valid(code: str) -> None:
    assert validate_uscc(code) == code
    assert validate_uscc(f" {code.lower()} ") == code
    # These two also carry a correct GB 11714 organization code check character.
    assert org_code_check_char(code[8:16]) == code[16]


@pytest.mark.parametrize(
    ("code", "rule", "message"),
    [
        ("91350100M000100Y44", "uscc.check-character", "check character should be '3', not '4'"),
        ("91350100M000100Y4", "uscc.length", "must be 18 characters, got 17"),
        ("91350100M000100Y433", "uscc.length", "must be 18 characters, got 19"),
        ("9135I100M000100Y43", "uscc.character", "character 'I' at position 5 is not allowed"),
        ("91350100M0001O0Y43", "uscc.character", "character 'O' at position 14 is not allowed"),
        ("913501００M000100Y43", "uscc.character", "character '０' at position 7 is not allowed"),
    ],
)
def test_bad_usccs_name_the_broken_rule(code: str, rule: str, message: str) -> None:
    with pytest.raises(InvalidCode) as e:
        validate_uscc(code)
    assert (e.value.rule, e.value.message) == (rule, message)
    assert not is_valid_uscc(code)


@given(usccs)
def test_generated_usccs_are_valid(code: str) -> None:
    assert validate_uscc(code) == code and is_valid_uscc(code)


@settings(max_examples=50)
@given(usccs)
def test_every_single_substitution_in_a_uscc_is_caught(code: str) -> None:
    # Weights 3^i are never 0 mod 31 and two characters differ by less than 31, so the prime
    # modulus catches every single substitution, including of the check character itself.
    for corrupted in substitutions(code, [USCC_ALPHABET] * 18):
        assert rule_of(validate_uscc, corrupted) == "uscc.check-character"


def test_org_code_check_char_writes_10_as_x_and_11_as_0() -> None:
    # 3*1 + 2*8 = 19 = 11 + 8 -> 11 - 8 = 3; 3*2 + 2*3 = 12 -> 11 - 1 = 10; 3*1 + 2*4 = 11 -> 11
    assert org_code_check_char("10000008") == "3"
    assert org_code_check_char("20000003") == "X"
    assert org_code_check_char("10000004") == "0"
    assert org_code_check_char("m000100y") == "4"


def test_uscc_check_char_refuses_bad_input() -> None:
    assert rule_of(uscc_check_char, "9135010") == "uscc.length"


# --- Citizen ID -----------------------------------------------------------------------------


@st.composite
def citizen_ids(draw: st.DrawFn) -> str:
    region = draw(st.sampled_from(PROVINCES)) + draw(st.text(DIGITS, min_size=4, max_size=4))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY))
    first17 = f"{region}{born:%Y%m%d}" + draw(st.text(DIGITS, min_size=3, max_size=3))
    return first17 + citizen_id_check_char(first17)


def test_standard_example_citizen_id() -> None:
    example = "11010519491231002X"  # GB 11643-1999 Appendix A
    assert validate_citizen_id(example.lower()) == example
    assert citizen_id_sex(example) == "female"
    assert citizen_id_birth_date(example) == date(1949, 12, 31)
    assert citizen_id_sex("110105194912310011") == "male"


@pytest.mark.parametrize(
    ("value", "rule", "message"),
    [
        (
            "110105194912310021",
            "citizen-id.check-character",
            "check character should be 'X', not '1'",
        ),
        ("110105491231002", "citizen-id.length", "must be 18 characters, got 15"),
        (
            "11010519491231O02X",
            "citizen-id.character",
            "character 'O' at position 15 is not allowed",
        ),
        (
            "11010519491231002Y",
            "citizen-id.character",
            "character 'Y' at position 18 is not allowed",
        ),
        (
            "190105194912310027",
            "citizen-id.region",
            "region code 190105 does not start with a province code of GB/T 2260",
        ),
        ("110105194902300023", "citizen-id.birth-date", "birth date 19490230 is not a real date"),
        (
            "110105189912310022",
            "citizen-id.birth-date",
            "birth date 1899-12-31 is before 1900-01-01 or in the future",
        ),
        (
            "110105202612010022",
            "citizen-id.birth-date",
            "birth date 2026-12-01 is before 1900-01-01 or in the future",
        ),
    ],
)
def test_bad_citizen_ids_name_the_broken_rule(value: str, rule: str, message: str) -> None:
    with pytest.raises(InvalidCode) as e:
        validate_citizen_id(value, today=TODAY)
    assert (e.value.rule, e.value.message) == (rule, message)
    assert not is_valid_citizen_id(value, today=TODAY)


def test_birth_date_today_is_allowed_but_not_tomorrow() -> None:
    for day, ok in ((TODAY, True), (TODAY + timedelta(days=1), False)):
        first17 = f"440301{day:%Y%m%d}001"
        assert is_valid_citizen_id(first17 + citizen_id_check_char(first17), today=TODAY) is ok


@given(citizen_ids())
def test_generated_citizen_ids_are_valid(value: str) -> None:
    assert validate_citizen_id(value, today=TODAY) == value


@settings(max_examples=50)
@given(citizen_ids())
def test_every_single_substitution_in_a_citizen_id_is_caught(value: str) -> None:
    # MOD 11-2 weights 2^k are never 0 mod 11 and digits differ by at most 9, so every
    # substitution changes the weighted sum mod 11. Some corruptions break the region or date
    # first; any refusal will do.
    for corrupted in substitutions(value, [DIGITS] * 17 + [DIGITS + "X"]):
        assert not is_valid_citizen_id(corrupted, today=TODAY), corrupted


# --- Plates ---------------------------------------------------------------------------------

provinces = st.sampled_from(PLATE_PROVINCES)
authorities = st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ")
ordinary_plates = st.tuples(provinces, authorities, st.text(PLATE_CHARS, min_size=5, max_size=5))
small_ne_plates = st.tuples(
    provinces,
    authorities,
    st.tuples(st.sampled_from("DF"), st.text(PLATE_CHARS, min_size=5, max_size=5)).map("".join),
)
large_ne_plates = st.tuples(
    provinces,
    authorities,
    st.tuples(st.text(DIGITS, min_size=5, max_size=5), st.sampled_from("DF")).map("".join),
)


def test_plate_province_list_is_the_31_mainland_ones() -> None:
    assert len(PLATE_PROVINCES) == len(set(PLATE_PROVINCES)) == 31


@given(ordinary_plates, st.booleans())
def test_ordinary_plates(parts: tuple[str, str, str], dotted: bool) -> None:
    province, authority, serial = parts
    plate = province + authority + ("·" if dotted else "") + serial
    assert validate_plate(plate.lower()) == province + authority + serial
    assert is_valid_plate(plate) and not is_new_energy_plate(plate)


@given(st.one_of(small_ne_plates, large_ne_plates), st.booleans())
def test_new_energy_plates(parts: tuple[str, str, str], dotted: bool) -> None:
    province, authority, serial = parts
    plate = province + authority + ("·" if dotted else "") + serial
    assert validate_plate(plate) == province + authority + serial
    assert is_new_energy_plate(plate)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("港A12345", "plate.province"),
        ("", "plate.province"),
        ("粤I12345", "plate.authority"),
        ("粤112345", "plate.authority"),
        ("粤B1234", "plate.length"),
        ("粤B1234567", "plate.length"),
        ("粤B1O345", "plate.character"),
        ("粤B·12I45", "plate.character"),
        ("粤B-12345", "plate.character"),
        ("粤BA12345", "plate.new-energy"),
        ("粤B1234DF", "plate.new-energy"),
    ],
)
def test_bad_plates_name_the_broken_rule(value: str, rule: str) -> None:
    assert rule_of(validate_plate, value) == rule
    assert not is_valid_plate(value) and not is_new_energy_plate(value)


# --- Mobile numbers -------------------------------------------------------------------------


@given(st.sampled_from("3456789"), st.text(DIGITS, min_size=9, max_size=9))
def test_generated_mobiles_are_valid(second: str, rest: str) -> None:
    number = "1" + second + rest
    assert validate_mobile(number) == number and is_valid_mobile(number)


@pytest.mark.parametrize(
    "value",
    [
        "13800138000",
        "+86 138 0013 8000",
        "86-138-0013-8000",
        "+8613800138000",
        "8613800138000",
        " 138-0013-8000 ",
    ],
)
def test_mobile_prefixes_and_separators_are_normalized(value: str) -> None:
    assert validate_mobile(value) == "13800138000"


@pytest.mark.parametrize(
    ("value", "rule", "message"),
    [
        ("1380013800", "mobile.length", "must be 11 digits, got 10"),
        ("+86 1380013800", "mobile.length", "must be 11 digits, got 10"),
        ("12800138000", "mobile.prefix", "must start with 13-19, got '12'"),
        ("23800138000", "mobile.prefix", "must start with 13-19, got '23'"),
        ("138.0013.8000", "mobile.character", "must contain only digits, got '138.0013.8000'"),
        (
            "１３８００１３８０００",
            "mobile.character",
            "must contain only digits, got '１３８００１３８０００'",
        ),
    ],
)
def test_bad_mobiles_name_the_broken_rule(value: str, rule: str, message: str) -> None:
    with pytest.raises(InvalidCode) as e:
        validate_mobile(value)
    assert (e.value.rule, e.value.message) == (rule, message)
    assert not is_valid_mobile(value)


# --- GB/T 2260 administrative division codes ------------------------------------------------


def _table() -> dict[str, tuple[str, str]]:
    """The shipped table, read independently of the validator."""
    from importlib import resources

    text = resources.files("qiao.catalog.data").joinpath("gbt2260.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")][1:]
    return {c: (n, lv) for c, n, lv in (line.split(",") for line in lines)}


TABLE = _table()
DIVISIONS = sorted(TABLE)


def test_the_table_covers_every_province_and_prefecture() -> None:
    levels = [lv for _n, lv in TABLE.values()]
    assert levels.count("province") == 34  # 23 provinces, 5 regions, 4 municipalities, HK, MO
    assert levels.count("prefecture") >= 333
    assert levels.count("county") >= 2800
    assert TABLE["440300"] == ("深圳市", "prefecture")
    assert TABLE["110000"] == ("北京市", "province")
    # Every county's province is in the table.
    assert all(c[:2] + "0000" in TABLE for c in TABLE)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("440000", "广东省"),
        ("440300", "广东省深圳市"),
        ("440305", "广东省深圳市南山区"),
        ("110101", "北京市东城区"),  # 110100 市辖区 is a grouping, not a place
        ("429004", "湖北省仙桃市"),  # a county directly under the province
        ("810000", "香港特别行政区"),
    ],
)
def test_division_names(code: str, name: str) -> None:
    assert validate_division_code(code) == code
    assert division_name(code) == name


def test_a_county_missing_from_the_table_is_valid_under_a_known_prefecture() -> None:
    assert "440399" not in TABLE
    assert validate_division_code("440399") == "440399"
    assert division_name("440399") == "广东省深圳市"
    assert division_level("440399") == "county"
    assert division_level("440300") == "prefecture" and division_level("440000") == "province"


@given(st.sampled_from(DIVISIONS))
def test_every_code_in_the_table_is_valid(code: str) -> None:
    assert validate_division_code(code) == code and is_valid_division_code(code)
    assert division_name(code)


def _oracle(code: str) -> bool:
    if code in TABLE:
        return True
    county = not code.endswith("00")
    return county and (
        code[:4] + "00" in TABLE or (code[2:4] == "90" and code[:2] + "0000" in TABLE)
    )


@settings(max_examples=50)
@given(st.sampled_from(DIVISIONS))
def test_every_single_substitution_of_a_division_code_follows_the_rule(code: str) -> None:
    # There is no check digit: a substituted code is valid exactly when the table (or a known
    # parent, for county codes) says so.
    for corrupted in substitutions(code, [DIGITS] * 6):
        assert is_valid_division_code(corrupted) == _oracle(corrupted), corrupted
        if not _oracle(corrupted):
            assert rule_of(validate_division_code, corrupted) == "division.unknown"


@given(st.text(DIGITS, min_size=0, max_size=12).filter(lambda s: len(s) != 6 and s.strip()))
def test_division_codes_of_the_wrong_length(value: str) -> None:
    assert rule_of(validate_division_code, value) == "division.length"


@given(
    st.sampled_from(DIVISIONS),
    st.integers(0, 5),
    st.characters(blacklist_categories=("Nd", "Zs", "Cc", "Cs")),
)
def test_division_codes_with_other_characters(code: str, at: int, ch: str) -> None:
    assert rule_of(validate_division_code, code[:at] + ch + code[at + 1 :]) == "division.character"


def test_full_width_digits_are_not_division_codes() -> None:
    assert rule_of(validate_division_code, "４４０３００") == "division.character"


# --- Dates and times (RFC 3339) -------------------------------------------------------------


@given(st.dates())
def test_generated_dates_are_valid(day: date) -> None:
    text = day.isoformat()
    if day.year >= 1000:
        assert validate_date(text) == text and is_valid_date(text)


@given(
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
)
def test_generated_datetimes_with_offsets_are_valid(when: datetime, minutes: int) -> None:
    tz = timezone(timedelta(minutes=minutes))
    text = when.replace(tzinfo=tz).isoformat()
    assert validate_datetime(text) == text and is_valid_datetime(text)
    assert validate_time(when.time().isoformat())


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("2026-02-29", "date.calendar"),
        ("2026-13-01", "date.calendar"),
        ("2026-1-1", "date.format"),
        ("20261129", "date.format"),
        ("2026/11/29", "date.format"),
        ("２０２６-11-29", "date.format"),
    ],
)
def test_bad_dates(value: str, rule: str) -> None:
    assert rule_of(validate_date, value) == rule


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("2026-11-29T10:00:00", "datetime.format"),  # no offset: ambiguous between departments
        ("2026-11-29T10:00", "datetime.format"),
        ("2026-11-29T10:00:00+0800", "datetime.format"),
        ("2026-11-29T10:00:00 CST", "datetime.format"),
        ("2026-11-29X10:00:00+08:00", "datetime.format"),
        ("2026-11-31T10:00:00+08:00", "datetime.calendar"),
        ("2026-11-29T24:00:00+08:00", "datetime.calendar"),
    ],
)
def test_bad_datetimes(value: str, rule: str) -> None:
    assert rule_of(validate_datetime, value) == rule


def test_datetime_separators_and_zulu() -> None:
    assert validate_datetime("2026-11-29 10:00:00Z") == "2026-11-29T10:00:00Z"
    assert validate_datetime("2026-11-29t10:00:00.5+08:00") == "2026-11-29T10:00:00.5+08:00"


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("25:00:00", "time.range"),
        ("12:60:00", "time.range"),
        ("12:00", "time.format"),
        ("12:00:00+08:00", "time.format"),
        ("noon", "time.format"),
    ],
)
def test_bad_times(value: str, rule: str) -> None:
    assert rule_of(validate_time, value) == rule
    assert not is_valid_time(value)


@given(
    st.dates(min_value=date(1000, 1, 1)),
    st.integers(0, 9),
    st.characters(exclude_characters="0123456789"),
)
def test_dates_with_a_character_replaced_fail(day: date, at: int, ch: str) -> None:
    text = day.isoformat()
    if text[at] == "-":
        return
    assert not is_valid_date(text[:at] + ch + text[at + 1 :])


# --- Wrong lengths and alphabets, for every validator ---------------------------------------

# (validator, a generator of valid values, the rule for a wrong length, the rule for a
# character outside the alphabet)
LENGTH_AND_ALPHABET = [
    (validate_uscc, usccs, "uscc.length", "uscc.character"),
    (lambda v: validate_citizen_id(v, today=TODAY), citizen_ids(), "citizen-id.length",
     "citizen-id.character"),
    (validate_mobile, st.text(DIGITS, min_size=9, max_size=9).map(lambda s: "13" + s),
     "mobile.length", "mobile.character"),
    (validate_division_code, st.sampled_from(DIVISIONS), "division.length", "division.character"),
]  # fmt: skip


@pytest.mark.parametrize(("check", "valid", "length_rule", "_c"), LENGTH_AND_ALPHABET)
@settings(max_examples=30)
@given(data=st.data())
def test_one_character_more_or_less_is_a_length_error(
    check: Callable[[str], str], valid: Any, length_rule: str, _c: str, data: st.DataObject
) -> None:
    value = data.draw(valid)
    at = data.draw(st.integers(0, len(value) - 1))
    shorter = value[:at] + value[at + 1 :]
    longer = value[:at] + data.draw(st.sampled_from(DIGITS)) + value[at:]
    for wrong in (shorter, longer):
        rule = rule_of(check, wrong)
        # Mobile numbers accept an 86 country code, which a longer number can look like.
        assert rule == length_rule or (check is validate_mobile and rule == "mobile.prefix")


@pytest.mark.parametrize(("check", "valid", "_l", "alphabet_rule"), LENGTH_AND_ALPHABET)
@settings(max_examples=30)
@given(data=st.data())
def test_a_character_outside_the_alphabet_is_refused(
    check: Callable[[str], str], valid: Any, _l: str, alphabet_rule: str, data: st.DataObject
) -> None:
    value = data.draw(valid)
    at = data.draw(st.integers(1, len(value) - 2))  # inner positions: edges are stripped
    # Letters I, O, Z, S, V are outside every alphabet here; so are CJK and full-width digits.
    ch = data.draw(st.sampled_from(["I", "O", "Z", "S", "V", "中", "５", "#", "."]))
    assert rule_of(check, value[:at] + ch + value[at + 1 :]) == alphabet_rule


@settings(max_examples=30)
@given(ordinary_plates, st.sampled_from(["I", "O", "#", "中", "５"]), st.integers(2, 6))
def test_a_plate_character_outside_the_alphabet_is_refused(
    parts: tuple[str, str, str], ch: str, at: int
) -> None:
    plate = "".join(parts)
    assert rule_of(validate_plate, plate[:at] + ch + plate[at + 1 :]) == "plate.character"


@given(ordinary_plates, st.integers(0, 2))
def test_plates_of_the_wrong_length(parts: tuple[str, str, str], cut: int) -> None:
    province, authority, serial = parts
    assert rule_of(validate_plate, province + authority + serial[: cut + 2]) == "plate.length"
    assert rule_of(validate_plate, province + authority + serial + "12") == "plate.length"
