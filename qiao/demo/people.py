"""Fictional people, vehicles, traffic violations and enterprises of the demo city 桥城.

Everything is drawn from ``random.Random(seed)``, never the global generator, so a seed always
gives the same city. Names are random combinations of common characters and codes are random
with correct check characters: any resemblance to a real person, plate or company is chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

from qiao.catalog.validators import (
    USCC_ALPHABET,
    citizen_id_check_char,
    org_code_check_char,
    uscc_check_char,
)

SEED = 20261129
CST = timezone(timedelta(hours=8), "CST")

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余杜叶程"
GIVEN_MALE = "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆建国志文博"
GIVEN_FEMALE = "芳娜敏静丽艳娟霞燕玲婷雪慧琳颖倩洁琪晶欣悦怡梅兰萍红月瑶佳"
# Prefecture-level division codes of GB/T 2260 (Shenzhen's districts), lent to 桥城.
REGION_CODES = ("440301", "440303", "440304", "440305", "440306")
DISTRICTS = ("滨江区", "西城区", "东湖区", "南山区")
ROADS = ("桥城大道", "滨江路", "望湖路", "新安路", "学府路", "科苑路", "红桂路", "东门北路")
MOBILE_PREFIXES = ("134", "138", "139", "150", "158", "177", "186", "189", "199")

_PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True)
class Person:
    name: str
    citizen_id: str
    sex: Literal["male", "female"]
    birth_date: date
    mobile: str


@dataclass(frozen=True)
class Vehicle:
    plate: str
    owner_citizen_id: str
    kind: str  # the GA 36 plate type, e.g. 小型新能源汽车


@dataclass(frozen=True)
class Violation:
    record_id: str
    plate: str
    code: str
    description: str
    occurred_at: str  # ISO 8601 with the +08:00 offset, as the police backend reports it
    location: str
    fine_yuan: int
    points: int
    handled: bool


@dataclass(frozen=True)
class Enterprise:
    uscc: str
    name: str
    legal_representative: str
    registered_capital_wan_yuan: int
    established: date
    status: Literal["存续", "在业", "注销"]
    credit_rating: Literal["A", "B", "C", "D"]
    address: str


@dataclass(frozen=True)
class DemoCity:
    people: list[Person]
    vehicles: list[Vehicle]
    violations: list[Violation]
    enterprises: list[Enterprise]


def make_uscc(rng: random.Random, authority: str, kind: str, region: str) -> str:
    """A unified social credit code (GB 32100-2015) with both of its check characters right.

    ``authority`` is the registration authority (e.g. '9' 市场监管, '1' 机构编制), ``kind`` the
    organization type under it, ``region`` the 6-digit GB/T 2260 code. The 9-character body is
    a GB 11714 organization code with its own check character, as real codes carry.
    """
    if (
        len(authority) != 1
        or len(kind) != 1
        or len(region) != 6
        or not (region.isascii() and region.isdigit())
    ):
        raise ValueError("authority and kind are one character each, region six digits")
    body = "".join(rng.choice(USCC_ALPHABET) for _ in range(8))
    first17 = authority + kind + region + body + org_code_check_char(body)
    return first17 + uscc_check_char(first17)


def _citizen_id(rng: random.Random, born: date, male: bool) -> str:
    # The sequence number's parity records sex (GB 11643-1999 §4.3); 000 is never issued.
    sequence = 2 * rng.randrange(500) + 1 if male else 2 * rng.randrange(1, 500)
    first17 = f"{rng.choice(REGION_CODES)}{born:%Y%m%d}{sequence:03d}"
    return first17 + citizen_id_check_char(first17)


def generate_people(n: int, seed: int = SEED) -> list[Person]:
    """``n`` adults born 1950-2006, each with a distinct citizen ID and mobile number."""
    rng = random.Random(seed)
    first_day, span = date(1950, 1, 1), (date(2006, 12, 31) - date(1950, 1, 1)).days
    people: list[Person] = []
    ids: set[str] = set()
    mobiles: set[str] = set()
    while len(people) < n:
        male = rng.random() < 0.5
        given = GIVEN_MALE if male else GIVEN_FEMALE
        name = rng.choice(SURNAMES) + "".join(rng.choices(given, k=rng.choice((1, 2, 2))))
        born = first_day + timedelta(days=rng.randrange(span + 1))
        citizen_id = _citizen_id(rng, born, male)
        mobile = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        if citizen_id in ids or mobile in mobiles:
            continue
        ids.add(citizen_id)
        mobiles.add(mobile)
        people.append(Person(name, citizen_id, "male" if male else "female", born, mobile))
    return people


def _plate(rng: random.Random, kind: str) -> str:
    if kind == "小型新能源汽车":
        serial = rng.choice("DF") + rng.choice(_PLATE_LETTERS + "0123456789")
        serial += f"{rng.randrange(10**4):04d}"
    elif kind == "大型新能源汽车":
        serial = f"{rng.randrange(10**5):05d}" + rng.choice("DF")
    else:
        # Ordinary serials are mostly digits with up to two letters, as issued in practice.
        chars = [rng.choice("0123456789") for _ in range(5)]
        for i in rng.sample(range(5), k=rng.choice((0, 1, 1, 2))):
            chars[i] = rng.choice(_PLATE_LETTERS)
        serial = "".join(chars)
    return "粤B" + serial


_VEHICLE_KINDS = ("小型汽车", "大型汽车", "小型新能源汽车", "大型新能源汽车")
_VEHICLE_KIND_WEIGHTS = (60, 5, 30, 5)


def generate_vehicles(
    people: list[Person], seed: int = SEED, n: int | None = None
) -> list[Vehicle]:
    """Vehicles registered in 粤B, owned by ``people`` (some own two); ``n`` defaults to 3/4 of
    the number of people."""
    rng = random.Random(seed)
    count = len(people) * 3 // 4 if n is None else n
    vehicles: list[Vehicle] = []
    plates: set[str] = set()
    while len(vehicles) < count:
        (kind,) = rng.choices(_VEHICLE_KINDS, weights=_VEHICLE_KIND_WEIGHTS)
        plate = _plate(rng, kind)
        if plate in plates:
            continue
        plates.add(plate)
        vehicles.append(Vehicle(plate, rng.choice(people).citizen_id, kind))
    return vehicles


# Shaped like the 公安部 traffic violation code list; fines and points are demo values.
VIOLATION_CODES: dict[str, tuple[str, int, int]] = {
    "1039": ("机动车违反规定停放、临时停车且驾驶人不在现场", 150, 0),
    "1344": ("机动车违反禁令标志指示", 200, 3),
    "1345": ("机动车违反禁止标线指示", 200, 3),
    "1352": ("驾驶机动车超过规定时速20%以上未达到50%", 200, 6),
    "1625": ("驾驶机动车违反道路交通信号灯通行", 200, 6),
}


def _location(rng: random.Random) -> str:
    a, b = rng.sample(ROADS, k=2)
    return f"桥城市{rng.choice(DISTRICTS)}{a}与{b}交叉口"


def generate_violations(vehicles: list[Vehicle], seed: int = SEED) -> list[Violation]:
    """0-3 violations per vehicle between 2025-01-01 and 2026-11-28, in time order per vehicle."""
    rng = random.Random(seed)
    start, end = datetime(2025, 1, 1, tzinfo=CST), datetime(2026, 11, 29, tzinfo=CST)
    span_minutes = (end - start) // timedelta(minutes=1)
    violations: list[Violation] = []
    for vehicle in vehicles:
        times = sorted(
            start + timedelta(minutes=rng.randrange(span_minutes))
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3)))
        )
        for when in times:
            code = rng.choice(sorted(VIOLATION_CODES))
            description, fine, points = VIOLATION_CODES[code]
            violations.append(
                Violation(
                    record_id=f"4403{when:%Y%m%d}{len(violations) + 1:06d}",
                    plate=vehicle.plate,
                    code=code,
                    description=description,
                    occurred_at=when.isoformat(timespec="seconds"),
                    location=_location(rng),
                    fine_yuan=fine,
                    points=points,
                    handled=rng.random() < 0.6,
                )
            )
    return violations


# Trade names (字号) are two of these characters, which gives thousands of distinct names.
TRADE_NAME_CHARS = "恒信瑞丰启明嘉禾云帆锦程华拓新澜众诚鼎盛青博远安和星海汇通立德川泰康卓越同舟"
INDUSTRIES = ("科技", "贸易", "物流", "建设工程", "餐饮管理", "电子", "生物医药", "文化传媒")
_STATUSES: tuple[Literal["存续", "在业", "注销"], ...] = ("存续", "在业", "注销")
_RATINGS: tuple[Literal["A", "B", "C", "D"], ...] = ("A", "B", "C", "D")
_CAPITALS_WAN_YUAN = (10, 50, 100, 200, 500, 1000, 3000, 5000)


def generate_enterprises(n: int, people: list[Person], seed: int = SEED) -> list[Enterprise]:
    """``n`` companies registered by market regulation (authority 9, type 1 企业), with distinct
    names and credit codes, whose legal representatives are drawn from ``people``."""
    rng = random.Random(seed)
    first_day, span = date(1995, 1, 1), (date(2026, 6, 30) - date(1995, 1, 1)).days
    enterprises: list[Enterprise] = []
    names: set[str] = set()
    codes: set[str] = set()
    while len(enterprises) < n:
        trade_name = "".join(rng.sample(TRADE_NAME_CHARS, k=2))
        name = f"桥城{trade_name}{rng.choice(INDUSTRIES)}有限公司"
        uscc = make_uscc(rng, "9", "1", rng.choice(REGION_CODES))
        if name in names or uscc in codes:
            continue
        names.add(name)
        codes.add(uscc)
        road, number = rng.choice(ROADS), rng.randint(1, 999)
        enterprises.append(
            Enterprise(
                uscc=uscc,
                name=name,
                legal_representative=rng.choice(people).name,
                registered_capital_wan_yuan=rng.choice(_CAPITALS_WAN_YUAN),
                established=first_day + timedelta(days=rng.randrange(span + 1)),
                status=rng.choices(_STATUSES, weights=(60, 30, 10))[0],
                credit_rating=rng.choices(_RATINGS, weights=(50, 30, 15, 5))[0],
                address=f"桥城市{rng.choice(DISTRICTS)}{road}{number}号",
            )
        )
    return enterprises


def build_city(seed: int = SEED) -> DemoCity:
    """The whole demo city: 200 people, 150 vehicles, their violations, 100 enterprises."""
    people = generate_people(200, seed)
    vehicles = generate_vehicles(people, seed)
    return DemoCity(
        people=people,
        vehicles=vehicles,
        violations=generate_violations(vehicles, seed),
        enterprises=generate_enterprises(100, people, seed),
    )


# Accident types and severities as coded in the catalog (QIAO-ACCIDENT-TYPE, -SEVERITY).
ACCIDENT_TYPES = ("11", "12", "13", "21", "31", "41", "51", "99")
_ACCIDENT_TYPE_WEIGHTS = (8, 15, 35, 25, 2, 2, 8, 5)


def generate_accidents(n: int = 120, seed: int = SEED) -> list[dict[str, object]]:
    """``n`` road traffic accidents in 桥城 between 2026-01-01 and 2026-11-28, in time order.

    Severity follows the casualties: 3 (fatal) when someone died, 2 (injury) when someone was
    hurt, else 1 (property damage only), as the catalog's code list defines them.
    """
    rng = random.Random(seed + 7)
    start = datetime(2026, 1, 1, tzinfo=CST)
    span_minutes = (datetime(2026, 11, 29, tzinfo=CST) - start) // timedelta(minutes=1)
    times = sorted(start + timedelta(minutes=rng.randrange(span_minutes)) for _ in range(n))
    accidents: list[dict[str, object]] = []
    for i, when in enumerate(times, start=1):
        deaths = 1 if rng.random() < 0.03 else 0
        injuries = rng.choices((0, 1, 2, 3), weights=(60, 25, 10, 5))[0]
        district = rng.choice(DISTRICTS)
        a, b = rng.sample(ROADS, k=2)
        accidents.append(
            {
                "accident_id": f"4403{when:%Y%m%d}{i:05d}",
                "occurred_at": when.isoformat(timespec="seconds"),
                "district": district,
                "location": f"桥城市{district}{a}与{b}交叉口",
                "accident_type": rng.choices(ACCIDENT_TYPES, weights=_ACCIDENT_TYPE_WEIGHTS)[0],
                "severity": "3" if deaths else "2" if injuries else "1",
                "deaths": deaths,
                "injuries": injuries,
                "vehicles": rng.choice((1, 2, 2, 2, 3)),
            }
        )
    return accidents


def generate_stations(n: int = 40, seed: int = SEED) -> list[dict[str, object]]:
    """``n`` public bicycle stations of 桥城 (``BS1000`` on), each with its docks and the
    bikes available when the city starts."""
    rng = random.Random(seed)
    return [
        {
            "station_id": f"BS{1000 + i}",
            "name": f"{rng.choice(DISTRICTS)}第{i + 1}站",
            "capacity": (cap := rng.randint(10, 40)),
            "bikes_available": rng.randint(0, cap),
        }
        for i in range(n)
    ]
