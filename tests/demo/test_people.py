from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qiao.catalog.validators import (
    citizen_id_birth_date,
    citizen_id_sex,
    is_new_energy_plate,
    org_code_check_char,
    validate_citizen_id,
    validate_mobile,
    validate_plate,
    validate_uscc,
)
from qiao.demo.people import (
    VIOLATION_CODES,
    DemoCity,
    build_city,
    generate_enterprises,
    generate_people,
    generate_vehicles,
    generate_violations,
    make_uscc,
)


@pytest.fixture(scope="module")
def city() -> DemoCity:
    return build_city()


def test_same_seed_same_city(city: DemoCity) -> None:
    assert build_city() == city
    assert build_city(20261129) == city


def test_other_seed_other_city(city: DemoCity) -> None:
    other = build_city(1)
    assert other.people != city.people and other.enterprises != city.enterprises


def test_global_random_is_neither_used_nor_disturbed() -> None:
    random.seed(7)
    expected = random.random()
    random.seed(7)
    first = build_city(5)
    assert random.random() == expected
    random.seed(8)
    assert build_city(5) == first


def test_city_size(city: DemoCity) -> None:
    assert (len(city.people), len(city.vehicles), len(city.enterprises)) == (200, 150, 100)
    assert city.violations


def test_people_have_valid_distinct_ids_that_agree_with_their_records(city: DemoCity) -> None:
    assert len({p.citizen_id for p in city.people}) == len(city.people)
    assert len({p.mobile for p in city.people}) == len(city.people)
    for p in city.people:
        assert validate_citizen_id(p.citizen_id) == p.citizen_id
        assert citizen_id_sex(p.citizen_id) == p.sex
        assert citizen_id_birth_date(p.citizen_id) == p.birth_date
        assert validate_mobile(p.mobile) == p.mobile
        assert 2 <= len(p.name) <= 3
    assert {p.sex for p in city.people} == {"male", "female"}


def test_vehicles_have_valid_distinct_plates_owned_by_people(city: DemoCity) -> None:
    owners = {p.citizen_id for p in city.people}
    assert len({v.plate for v in city.vehicles}) == len(city.vehicles)
    for v in city.vehicles:
        assert validate_plate(v.plate) == v.plate and v.plate.startswith("粤B")
        assert is_new_energy_plate(v.plate) == ("新能源" in v.kind)
        assert v.owner_citizen_id in owners
    assert {is_new_energy_plate(v.plate) for v in city.vehicles} == {True, False}


def test_violations_belong_to_vehicles_and_are_well_formed(city: DemoCity) -> None:
    plates = {v.plate for v in city.vehicles}
    per_vehicle = Counter(v.plate for v in city.violations)
    assert set(per_vehicle) <= plates and max(per_vehicle.values()) <= 3
    assert len(per_vehicle) < len(plates)  # some vehicles have a clean record
    assert len({v.record_id for v in city.violations}) == len(city.violations)
    for v in city.violations:
        when = datetime.fromisoformat(v.occurred_at)
        assert v.occurred_at.endswith("+08:00") and when.utcoffset() == timedelta(hours=8)
        assert date(2025, 1, 1) <= when.date() <= date(2026, 11, 28)
        assert (v.description, v.fine_yuan, v.points) == VIOLATION_CODES[v.code]
        assert v.location.startswith("桥城市")


def test_enterprises_have_valid_distinct_codes_and_names(city: DemoCity) -> None:
    names = {p.name for p in city.people}
    assert len({e.uscc for e in city.enterprises}) == len(city.enterprises)
    assert len({e.name for e in city.enterprises}) == len(city.enterprises)
    for e in city.enterprises:
        assert validate_uscc(e.uscc) == e.uscc and e.uscc[:2] == "91"
        assert org_code_check_char(e.uscc[8:16]) == e.uscc[16]
        assert e.name.startswith("桥城") and e.name.endswith("有限公司")
        assert e.legal_representative in names
        assert e.status in ("存续", "在业", "注销") and e.credit_rating in "ABCD"
        assert date(1995, 1, 1) <= e.established <= date(2026, 6, 30)


@given(
    st.integers(0, 2**32),
    st.sampled_from("159Y"),
    st.sampled_from("1239"),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)
def test_make_uscc_is_always_valid(seed: int, authority: str, kind: str, region: str) -> None:
    code = make_uscc(random.Random(seed), authority, kind, region)
    assert validate_uscc(code) == code
    assert code[:8] == authority + kind + region
    assert org_code_check_char(code[8:16]) == code[16]


def test_make_uscc_refuses_malformed_parts() -> None:
    with pytest.raises(ValueError):
        make_uscc(random.Random(0), "9", "1", "4403")


@given(st.integers(0, 2**32))
def test_generators_are_valid_for_any_seed(seed: int) -> None:
    people = generate_people(10, seed)
    vehicles = generate_vehicles(people, seed, n=10)
    for p in people:
        validate_citizen_id(p.citizen_id)
    for v in vehicles:
        validate_plate(v.plate)
    assert {v.plate for v in generate_violations(vehicles, seed)} <= {v.plate for v in vehicles}
    for e in generate_enterprises(5, people, seed):
        validate_uscc(e.uscc)
