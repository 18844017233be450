"""Agreements exported as ODRL 2.2 policies (JSON-LD)."""

from __future__ import annotations

import json
from datetime import datetime, time
from typing import Any

from qiao.agreements.document import (
    CST,
    Agreement,
    Conditions,
    Masking,
    MaskRule,
    Operations,
    Party,
    RateLimit,
    ResourceRef,
    TimeWindow,
)
from qiao.agreements.odrl import (
    DAY_OF_WEEK,
    EMERGENCY,
    END_USER,
    FIELD,
    HTTP_METHOD,
    MASK_PARAMS,
    MASK_RULE,
    PATH,
    PER_DAY,
    PER_ELAPSED_TIME,
    PROFILE,
    SHA256,
    TIME_OF_DAY,
    to_odrl,
)
from qiao.catalog.spec import SharingType

BASE = "https://hub.example.gov.cn"
PROVIDER = "11440300MB2C9K3U0Q"
CONSUMER = "11440300MB8X1TQE5F"


def agreement(**changes: Any) -> Agreement:
    """The docs' example agreement: transport's access to public security's violations."""
    document: dict[str, Any] = {
        "id": "agr-k3v9q2m7x1c4b8n5",
        "instance": "CN-DEMO",
        "provider": Party(org=PROVIDER, name="桥城市公安局"),
        "consumer": Party(org=CONSUMER, name="桥城市交通运输局", apps=("traffic-enforcement",)),
        "resource": ResourceRef(
            code="vehicle-violations", version=3, sharing_type=SharingType.CONDITIONAL
        ),
        "operations": Operations(methods=("GET",), paths=("", "*")),
        "fields": ("plate", "code", "location", "fine_yuan", "owner.age"),
        "masking": {
            "plate": Masking(rule=MaskRule.PLATE),
            "location": Masking(rule=MaskRule.ADDRESS),
            "owner.age": Masking(rule=MaskRule.AGE_BAND, params={"width": 5}),
        },
        "purposes": ("traffic-enforcement", "statistics"),
        "valid_from": datetime(2026, 11, 29, 10, 0, tzinfo=CST),
        "valid_until": datetime(2027, 11, 29, 10, 0, tzinfo=CST),
        "rate_limit": RateLimit(requests=50, per_seconds=1),
        "daily_quota": 20000,
        "conditions": Conditions(
            end_user_required=True,
            time_windows=(TimeWindow(days=(1, 2, 3, 4, 5), start=time(7), end=time(22)),),
        ),
        "issued_at": datetime(2026, 11, 29, 10, 0, tzinfo=CST),
    }
    document.update(changes)
    return Agreement(**document)


def constraints(policy: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = policy["permission"][0]["constraint"]
    return result


def find(policy: dict[str, Any], left: str, operator: str | None = None) -> list[dict[str, Any]]:
    return [
        c
        for c in constraints(policy)
        if c.get("leftOperand") == left and operator in (None, c["operator"])
    ]


def test_policy_structure() -> None:
    a = agreement()
    policy = to_odrl(a, BASE + "/")
    assert policy["@context"] == "http://www.w3.org/ns/odrl.jsonld"
    assert policy["@type"] == "Agreement"
    assert policy["uid"] == f"{BASE}/api/v1/agreements/agr-k3v9q2m7x1c4b8n5"
    assert policy["profile"] == PROFILE
    assert policy["assigner"] == f"{BASE}/api/v1/organizations/{PROVIDER}"
    assert policy["assignee"] == f"{BASE}/api/v1/organizations/{CONSUMER}"
    assert policy[SHA256] == a.sha256()
    assert len(policy["permission"]) == 1
    permission = policy["permission"][0]
    assert permission["target"] == (
        f"{BASE}/api/v1/catalog/resources/{PROVIDER}/vehicle-violations?version=3"
    )
    assert permission["action"] == "read"
    assert "prohibition" not in policy


def test_every_constraint_is_present_when_set() -> None:
    policy = to_odrl(agreement(), BASE)
    assert find(policy, "purpose", "isAnyOf")[0]["rightOperand"] == [
        "traffic-enforcement",
        "statistics",
    ]
    start = find(policy, "dateTime", "gteq")[0]["rightOperand"]
    until = find(policy, "dateTime", "lt")[0]["rightOperand"]
    assert start == {
        "@value": "2026-11-29T10:00:00+08:00",
        "@type": "http://www.w3.org/2001/XMLSchema#dateTime",
    }
    assert until["@value"] == "2027-11-29T10:00:00+08:00"
    counts = {c["unit"]: c for c in find(policy, "count", "lteq")}
    assert counts[PER_DAY]["rightOperand"] == 20000
    assert counts[PER_ELAPSED_TIME]["rightOperand"] == 50
    assert counts[PER_ELAPSED_TIME]["urn:qiao:odrl:elapsedTime"]["@value"] == "PT1S"
    assert find(policy, "systemDevice")[0]["rightOperand"] == [
        f"CN-DEMO/{CONSUMER}/traffic-enforcement"
    ]
    assert find(policy, HTTP_METHOD)[0]["rightOperand"] == ["GET"]
    assert find(policy, PATH)[0]["rightOperand"] == ["", "*"]
    assert find(policy, FIELD)[0]["rightOperand"] == [
        "plate",
        "code",
        "location",
        "fine_yuan",
        "owner.age",
    ]
    assert find(policy, END_USER)[0]["rightOperand"] is True
    windows = [c for c in constraints(policy) if "and" in c]
    assert len(windows) == 1
    days, start_time, end_time = windows[0]["and"]
    assert (days["leftOperand"], days["rightOperand"]) == (DAY_OF_WEEK, [1, 2, 3, 4, 5])
    assert (start_time["leftOperand"], start_time["operator"]) == (TIME_OF_DAY, "gteq")
    assert start_time["rightOperand"]["@value"] == "07:00:00+08:00"
    assert end_time["rightOperand"]["@value"] == "22:00:00+08:00"


def test_several_time_windows_are_alternatives() -> None:
    windows = (
        TimeWindow(days=(1, 2, 3, 4, 5), start=time(7), end=time(22)),
        TimeWindow(days=(6,), start=time(9), end=time(12)),
    )
    policy = to_odrl(agreement(conditions=Conditions(time_windows=windows)), BASE)
    (either,) = [c for c in constraints(policy) if "or" in c]
    assert [w["and"][0]["rightOperand"] for w in either["or"]] == [[1, 2, 3, 4, 5], [6]]


def test_optional_constraints_are_absent_when_not_set() -> None:
    policy = to_odrl(
        agreement(
            rate_limit=None,
            daily_quota=None,
            conditions=Conditions(),
            fields=None,
            masking={},
            consumer=Party(org=CONSUMER, name="桥城市交通运输局"),
        ),
        BASE,
    )
    lefts = [c.get("leftOperand") for c in constraints(policy)]
    assert lefts == ["purpose", "dateTime", "dateTime", HTTP_METHOD, PATH]
    assert all("and" not in c and "or" not in c for c in constraints(policy))
    assert "duty" not in policy["permission"][0]


def test_emergency_only_and_writes() -> None:
    policy = to_odrl(
        agreement(
            conditions=Conditions(emergency_only=True),
            operations=Operations(methods=("GET", "POST"), paths=("**",)),
        ),
        BASE,
    )
    assert find(policy, EMERGENCY, "eq")[0]["rightOperand"] is True
    assert find(policy, END_USER) == []
    assert policy["permission"][0]["action"] == "use"


def test_a_duty_per_masking_rule() -> None:
    duties = to_odrl(agreement(), BASE)["permission"][0]["duty"]
    assert len(duties) == 3
    found = {}
    for duty in duties:
        (action,) = duty["action"]
        assert action["rdf:value"] == {"@id": "odrl:anonymize"}
        refined = {r["leftOperand"]: r["rightOperand"] for r in action["refinement"]}
        found[refined[FIELD]] = (refined[MASK_RULE], refined.get(MASK_PARAMS))
    assert found == {
        "location": ("address", None),
        "owner.age": ("age-band", {"@value": {"width": 5}, "@type": "@json"}),
        "plate": ("plate", None),
    }


def test_json_serializable_and_round_trip_of_key_facts() -> None:
    a = agreement()
    text = json.dumps(to_odrl(a, BASE), ensure_ascii=False)
    policy = json.loads(text)
    assert policy["uid"].rsplit("/", 1)[1] == a.id
    assert policy["assigner"].rsplit("/", 1)[1] == a.provider.org
    assert policy["assignee"].rsplit("/", 1)[1] == a.consumer.org
    assert policy[SHA256] == a.sha256()
    assert tuple(find(policy, "purpose")[0]["rightOperand"]) == a.purposes
    start = find(policy, "dateTime", "gteq")[0]["rightOperand"]["@value"]
    until = find(policy, "dateTime", "lt")[0]["rightOperand"]["@value"]
    assert datetime.fromisoformat(start) == a.valid_from
    assert datetime.fromisoformat(until) == a.valid_until
    target = policy["permission"][0]["target"]
    assert target.endswith(f"/{a.resource.code}?version={a.resource.version}")
    masked = {
        r["rightOperand"]
        for d in policy["permission"][0]["duty"]
        for r in d["action"][0]["refinement"]
        if r["leftOperand"] == FIELD
    }
    assert masked == set(a.masking)


def test_a_changed_agreement_changes_its_export_hash() -> None:
    one = to_odrl(agreement(), BASE)
    other = to_odrl(agreement(daily_quota=19999), BASE)
    assert one[SHA256] != other[SHA256]
