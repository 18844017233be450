"""Validators for the identifiers that government data is keyed by.

Pure functions, no I/O. Each ``validate_*`` returns the value in its normalized form or raises
:class:`InvalidCode`, whose ``rule`` is a stable identifier and whose message says in plain
English what is wrong; each ``is_valid_*`` is the same check as a boolean.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from datetime import date, datetime, time
from functools import cache
from importlib import resources
from typing import Literal

__all__ = [
    "InvalidCode",
    "citizen_id_birth_date",
    "citizen_id_check_char",
    "citizen_id_sex",
    "division_level",
    "division_name",
    "is_new_energy_plate",
    "is_valid_citizen_id",
    "is_valid_date",
    "is_valid_datetime",
    "is_valid_division_code",
    "is_valid_mobile",
    "is_valid_plate",
    "is_valid_time",
    "is_valid_uscc",
    "org_code_check_char",
    "uscc_check_char",
    "validate_citizen_id",
    "validate_date",
    "validate_datetime",
    "validate_division_code",
    "validate_mobile",
    "validate_plate",
    "validate_time",
    "validate_uscc",
]


class InvalidCode(ValueError):
    """A code broke a rule of its standard; ``rule`` names the rule, e.g. ``uscc.length``."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def _require_length(value: str, length: int, rule: str, unit: str = "characters") -> None:
    if len(value) != length:
        raise InvalidCode(rule, f"must be {length} {unit}, got {len(value)}")


def _require_alphabet(value: str, alphabet: str, rule: str, offset: int = 0) -> None:
    for i, ch in enumerate(value):
        if ch not in alphabet:
            raise InvalidCode(rule, f"character {ch!r} at position {i + offset + 1} is not allowed")


# --- GB 32100-2015 unified social credit code ----------------------------------------------

# The 31 characters of GB 32100-2015 §4.1: I, O, Z, S and V are left out because they are
# easily confused with 1, 0, 2, 5 and U. A character's value is its index here.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))


def uscc_check_char(first17: str) -> str:
    """The check character (position 18) of a unified social credit code, GB 32100-2015 §4.2.

    Weights are 3^i mod 31; the check value is 31 - (weighted sum mod 31), where 31 becomes 0.
    """
    _require_length(first17, 17, "uscc.length")
    _require_alphabet(first17, USCC_ALPHABET, "uscc.character")
    total = sum(USCC_ALPHABET.index(ch) * w for ch, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(code: str) -> str:
    """Check a unified social credit code (统一社会信用代码), GB 32100-2015.

    Checks length, alphabet and the check character; returns the code in upper case. The
    embedded GB 11714 organization code check (see :func:`org_code_check_char`) is not enforced,
    because codes issued by some registration authorities do not satisfy it.
    """
    code = code.strip().upper()
    _require_length(code, 18, "uscc.length")
    _require_alphabet(code, USCC_ALPHABET, "uscc.character")
    expected = uscc_check_char(code[:17])
    if code[17] != expected:
        raise InvalidCode(
            "uscc.check-character", f"check character should be {expected!r}, not {code[17]!r}"
        )
    return code


def is_valid_uscc(code: str) -> bool:
    """Whether ``code`` passes :func:`validate_uscc`."""
    return _passes(validate_uscc, code)


# --- GB 11714-1997 organization code -------------------------------------------------------

_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)


def org_code_check_char(first8: str) -> str:
    """The check character of a GB 11714-1997 organization code (组织机构代码), §4.

    The code is characters 9-17 of a unified social credit code. Digits count as themselves and
    letters A-Z as 10-35; c = 11 - (weighted sum mod 11), where 10 is written 'X' and 11 '0'.
    """
    first8 = first8.upper()
    _require_length(first8, 8, "org-code.length")
    _require_alphabet(first8, _ORG_ALPHABET, "org-code.character")
    total = sum(_ORG_ALPHABET.index(ch) * w for ch, w in zip(first8, _ORG_WEIGHTS, strict=True))
    c = 11 - total % 11
    return {10: "X", 11: "0"}.get(c, str(c))


# --- GB 11643-1999 citizen identity number -------------------------------------------------

# Province-level prefixes of GB/T 2260 (71 Taiwan, 81 Hong Kong, 82 Macao included).
_PROVINCE_PREFIXES = frozenset(
    f"{n:02d}"
    for lo, hi in ((11, 15), (21, 23), (31, 37), (41, 46), (50, 54), (61, 65), (71, 71), (81, 82))
    for n in range(lo, hi + 1)
)
# ISO 7064 MOD 11-2: the weight of position i (1-based, of 18) is 2^(18-i) mod 11.
_CITIZEN_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_DIGITS = "0123456789"
_EARLIEST_BIRTH = date(1900, 1, 1)


def citizen_id_check_char(first17: str) -> str:
    """The check character of a citizen identity number, GB 11643-1999 §5.1 (ISO 7064 MOD 11-2).

    The check value is (12 - weighted sum mod 11) mod 11, with 10 written 'X'.
    """
    _require_length(first17, 17, "citizen-id.length")
    _require_alphabet(first17, _DIGITS, "citizen-id.character")
    total = sum(int(ch) * w for ch, w in zip(first17, _CITIZEN_ID_WEIGHTS, strict=True))
    return "0123456789X"[(12 - total % 11) % 11]


def validate_citizen_id(value: str, *, today: date | None = None) -> str:
    """Check a citizen identity number (公民身份号码), GB 11643-1999.

    Checks the province part of the GB/T 2260 region code, that the birth date is a real date
    between 1900-01-01 and ``today`` (default: the current date), and the check character.
    Returns the number with a lower-case 'x' upper-cased. The 15-digit numbers of the first
    generation of cards are not accepted.
    """
    value = value.strip().upper()
    _require_length(value, 18, "citizen-id.length")
    _require_alphabet(value[:17], _DIGITS, "citizen-id.character")
    _require_alphabet(value[17], _DIGITS + "X", "citizen-id.character", offset=17)
    if value[:2] not in _PROVINCE_PREFIXES:
        raise InvalidCode(
            "citizen-id.region",
            f"region code {value[:6]} does not start with a province code of GB/T 2260",
        )
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise InvalidCode(
            "citizen-id.birth-date", f"birth date {value[6:14]} is not a real date"
        ) from None
    if born < _EARLIEST_BIRTH or born > (today or date.today()):
        raise InvalidCode(
            "citizen-id.birth-date",
            f"birth date {born.isoformat()} is before 1900-01-01 or in the future",
        )
    expected = citizen_id_check_char(value[:17])
    if value[17] != expected:
        raise InvalidCode(
            "citizen-id.check-character",
            f"check character should be {expected!r}, not {value[17]!r}",
        )
    return value


def is_valid_citizen_id(value: str, *, today: date | None = None) -> bool:
    """Whether ``value`` passes :func:`validate_citizen_id`."""
    return _passes(lambda v: validate_citizen_id(v, today=today), value)


def citizen_id_sex(value: str) -> Literal["male", "female"]:
    """The sex a citizen identity number records: odd sequence digit (position 17) is male."""
    return "male" if int(validate_citizen_id(value)[16]) % 2 else "female"


def citizen_id_birth_date(value: str) -> date:
    """The birth date a citizen identity number records (positions 7-14, YYYYMMDD)."""
    v = validate_citizen_id(value)
    return date(int(v[6:10]), int(v[10:12]), int(v[12:14]))


# --- GA 36-2018 motor vehicle plate numbers ------------------------------------------------

PLATE_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
# Plates never use I or O, which read as 1 and 0.
_PLATE_LETTER = "[A-HJ-NP-Z]"
_PLATE_CHAR = "[A-HJ-NP-Z0-9]"
_ORDINARY_SERIAL = re.compile(f"{_PLATE_CHAR}{{5}}")
# Small new-energy vehicles put D (battery electric) or F (other new energy) first; large
# ones put it last, after five digits.
_NEW_ENERGY_SERIAL = re.compile(f"[DF]{_PLATE_CHAR}{{5}}|[0-9]{{5}}[DF]")
_PLATE_SEPARATOR = "·"


def validate_plate(value: str) -> str:
    """Check a motor vehicle plate number (机动车号牌号码), GA 36-2018.

    Accepts a province abbreviation, an issuing authority letter, an optional '·', then five
    characters (ordinary plates) or six (new-energy plates: D or F then five characters for
    small vehicles, five digits then D or F for large ones). Returns it upper-cased without '·'.
    """
    value = value.strip().upper()
    if value[2:3] == _PLATE_SEPARATOR:
        value = value[:2] + value[3:]
    if not value or value[0] not in PLATE_PROVINCES:
        raise InvalidCode(
            "plate.province",
            f"must start with a province abbreviation such as 京 or 粤, got {value[:1]!r}",
        )
    if not re.fullmatch(_PLATE_LETTER, value[1:2]):
        raise InvalidCode(
            "plate.authority",
            f"issuing authority must be a letter A-Z other than I or O, got {value[1:2]!r}",
        )
    serial = value[2:]
    if len(serial) not in (5, 6):
        raise InvalidCode(
            "plate.length",
            f"must have 5 characters after the authority letter (6 for new-energy), "
            f"got {len(serial)}",
        )
    _require_alphabet(serial, "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", "plate.character", offset=2)
    if len(serial) == 6 and not _NEW_ENERGY_SERIAL.fullmatch(serial):
        raise InvalidCode(
            "plate.new-energy",
            "a 6-character new-energy serial must start with D or F, "
            "or be 5 digits followed by D or F",
        )
    return value


def is_valid_plate(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_plate`."""
    return _passes(validate_plate, value)


def is_new_energy_plate(value: str) -> bool:
    """Whether ``value`` is a valid new-energy plate; False for ordinary and invalid plates."""
    try:
        return len(validate_plate(value)) == 8
    except InvalidCode:
        return False


# --- Mainland mobile numbers (MIIT numbering plan) -----------------------------------------

_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def validate_mobile(value: str) -> str:
    """Check a mainland China mobile number: 11 digits starting 13-19 in the MIIT numbering plan.

    Spaces and hyphens are ignored and a +86 or 86 country code is dropped; returns 11 digits.
    """
    digits = re.sub(r"[\s-]", "", value)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not digits.isascii() or not digits.isdigit():
        raise InvalidCode("mobile.character", f"must contain only digits, got {value!r}")
    _require_length(digits, 11, "mobile.length", "digits")
    if not _MOBILE.fullmatch(digits):
        raise InvalidCode("mobile.prefix", f"must start with 13-19, got {digits[:2]!r}")
    return digits


def is_valid_mobile(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_mobile`."""
    return _passes(validate_mobile, value)


# --- GB/T 2260 administrative division codes -----------------------------------------------

# The table ships with Qiao (qiao/catalog/data/gbt2260.csv, built by scripts/build_gbt2260.py
# from the MIT-licensed cpca package): provinces, prefectures and counties.
_DIVISION_TABLE = "gbt2260.csv"
# Names that stand for a grouping rather than a place (市辖区, 县, 省直辖县级行政区划): they are
# valid codes but left out when a full name is spelled.
_GROUPING_NAMES = frozenset({"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"})


@cache
def _divisions() -> dict[str, tuple[str, str]]:
    """code -> (name, level), read once from the shipped table."""
    table: dict[str, tuple[str, str]] = {}
    text = resources.files("qiao.catalog.data").joinpath(_DIVISION_TABLE).read_text("utf-8")
    rows = csv.reader(line for line in text.splitlines() if not line.startswith("#"))
    next(rows)  # header
    for code, name, level in rows:
        table[code] = (name, level)
    return table


def _division_level_of(code: str) -> str:
    if code.endswith("0000"):
        return "province"
    if code.endswith("00"):
        return "prefecture"
    return "county"


def validate_division_code(value: str) -> str:
    """Check an administrative division code (行政区划代码), GB/T 2260.

    Six digits: province (2), prefecture (2), county (2). A code in the shipped table is valid.
    A county-level code that is not in the table is still valid when its prefecture (or, for
    counties directly under a province such as 429004 仙桃市, its province) is: counties are
    created and renumbered far more often than the table is revised, and a county code's first
    four digits are what ties it to the higher levels (GB/T 2260-2007 §4). Province and
    prefecture codes must be in the table.
    """
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise InvalidCode("division.character", f"must contain only digits, got {value!r}")
    _require_length(value, 6, "division.length", "digits")
    table = _divisions()
    if value in table:
        return value
    if _division_level_of(value) == "county" and (
        value[:4] + "00" in table or (value[:2] + "0000" in table and value[2:4] == "90")
    ):
        return value
    raise InvalidCode(
        "division.unknown", f"{value} is not an administrative division code of GB/T 2260"
    )


def is_valid_division_code(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_division_code`."""
    return _passes(validate_division_code, value)


def division_level(code: str) -> Literal["province", "prefecture", "county"]:
    """The level a valid division code is at."""
    level = _division_level_of(validate_division_code(code))
    return (
        "province" if level == "province" else "prefecture" if level == "prefecture" else "county"
    )


def division_name(code: str) -> str:
    """The full name of a division, from the province down, e.g. 440300 -> 广东省深圳市.

    Grouping entries (市辖区, 县) are skipped; a county-level code missing from the table is
    named by its known parents, e.g. 广东省深圳市 for 440309.
    """
    code = validate_division_code(code)
    table = _divisions()
    parts: list[str] = []
    for prefix in dict.fromkeys((code[:2] + "0000", code[:4] + "00", code)):
        name = table.get(prefix, ("", ""))[0]
        if name and name not in _GROUPING_NAMES:
            parts.append(name)
    return "".join(parts)


# --- Dates and times (RFC 3339 §5.6, the profile of ISO 8601 that JSON Schema uses) --------

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?")
_OFFSET = re.compile(r"Z|[+-][0-9]{2}:[0-9]{2}")


def validate_date(value: str) -> str:
    """Check an RFC 3339 full-date (YYYY-MM-DD) that exists on the calendar; returns it."""
    value = value.strip()
    if not _DATE.fullmatch(value):
        raise InvalidCode("date.format", f"must be written YYYY-MM-DD, got {value!r}")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise InvalidCode("date.calendar", f"{value} is not a real date") from None
    return value


def is_valid_date(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_date`."""
    return _passes(validate_date, value)


def validate_time(value: str) -> str:
    """Check an RFC 3339 partial-time (hh:mm:ss with optional fraction, no offset)."""
    value = value.strip()
    if not _TIME.fullmatch(value):
        raise InvalidCode("time.format", f"must be written hh:mm:ss, got {value!r}")
    try:
        time.fromisoformat(value[:8])
    except ValueError:
        raise InvalidCode("time.range", f"{value} is not a time of day") from None
    return value


def is_valid_time(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_time`."""
    return _passes(validate_time, value)


def validate_datetime(value: str) -> str:
    """Check an RFC 3339 date-time: date 'T' time and a required offset (Z or +08:00).

    A time without an offset is ambiguous between departments, so it is refused; the
    separator may be 'T', 't' or a space (RFC 3339 §5.6 note). Returns it with 'T'.
    """
    value = value.strip()
    if len(value) < 20 or value[10] not in "Tt ":
        raise InvalidCode(
            "datetime.format", f"must be written YYYY-MM-DDThh:mm:ss+08:00, got {value!r}"
        )
    value = value[:10] + "T" + value[11:]
    day, rest = value[:10], value[11:]
    match = _TIME.match(rest)
    if not match or not _OFFSET.fullmatch(rest[match.end() :].upper()):
        raise InvalidCode(
            "datetime.format",
            f"must be written YYYY-MM-DDThh:mm:ss with an offset (Z or +08:00), got {value!r}",
        )
    try:
        validate_date(day)
        validate_time(match.group(0))
        datetime.fromisoformat(value.upper() if value.endswith("z") else value)
    except (InvalidCode, ValueError):
        raise InvalidCode("datetime.calendar", f"{value} is not a real date and time") from None
    return value


def is_valid_datetime(value: str) -> bool:
    """Whether ``value`` passes :func:`validate_datetime`."""
    return _passes(validate_datetime, value)


def _passes(check: Callable[[str], str], value: str) -> bool:
    try:
        check(value)
    except InvalidCode:
        return False
    return True
