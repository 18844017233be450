from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

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
    is_new_energy_plate,
    is_valid_citizen_id,
    is_valid_mobile,
    is_valid_plate,
    is_valid_uscc,
    org_code_check_char,
    uscc_check_char,
    validate_citizen_id,
    validate_mobile,
    validate_plate,
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
