"""Agreements as ODRL 2.2 policies (JSON-LD), for dataspace tools (EDC, X-Road 8).

The export follows the ODRL Information Model 2.2 (W3C Recommendation, 2018-02-15): an
``Agreement`` policy (§2.1, §2.1.3) between an assigner (the provider) and an assignee (the
consumer), with one permission (§2.6) on the resource, its constraints (§2.5) and a duty
(§2.6.1) per masking rule. What ODRL's vocabulary does not name (an HTTP method, a weekday,
a field) is a left operand of the Qiao profile (§2.1.1 profile), IRIs under ``urn:qiao:odrl:``
like the rest of Qiao's identifiers (``urn:qiao:problem:…``).

The signed agreement stays the authority: the export is a view of it and carries the
agreement's SHA-256 so a reader can fetch and check the original.
"""

from __future__ import annotations

from typing import Any

from qiao.agreements.document import Agreement, Masking, TimeWindow

CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
QIAO = "urn:qiao:odrl:"
PROFILE = QIAO + "profile:1"
XSD = "http://www.w3.org/2001/XMLSchema#"
# The Qiao profile's left operands and properties (full IRIs: the ODRL context defines no
# prefix for them, and an absolute IRI needs none in JSON-LD).
SHA256 = QIAO + "sha256"
INSTANCE = QIAO + "instance"
HTTP_METHOD = QIAO + "httpMethod"
PATH = QIAO + "path"
FIELD = QIAO + "field"
MASK_RULE = QIAO + "maskRule"
MASK_PARAMS = QIAO + "maskParams"
END_USER = QIAO + "endUserIdentified"
EMERGENCY = QIAO + "emergencyDeclared"
DAY_OF_WEEK = QIAO + "dayOfWeek"  # ISO 8601: 1 = Monday … 7 = Sunday
TIME_OF_DAY = QIAO + "timeOfDay"  # China Standard Time
ELAPSED_TIME = QIAO + "elapsedTime"  # the sliding window of a rate limit
PER_DAY = QIAO + "unit:perDay"  # a count per calendar day (CST), reset at midnight
PER_ELAPSED_TIME = QIAO + "unit:perElapsedTime"  # a count per sliding window
READ_ONLY = frozenset({"GET", "HEAD"})


def _constraint(left: str, operator: str, right: Any, **extra: Any) -> dict[str, Any]:
    """ODRL 2.2 §2.5.1 Constraint: leftOperand, operator, rightOperand (and unit, …)."""
    return {"leftOperand": left, "operator": operator, "rightOperand": right, **extra}


def _typed(value: str, xsd_type: str) -> dict[str, str]:
    return {"@value": value, "@type": XSD + xsd_type}


def _window(window: TimeWindow) -> dict[str, Any]:
    """A time window: weekday and time of day together (§2.5.2 LogicalConstraint ``and``)."""
    return {
        "and": [
            _constraint(DAY_OF_WEEK, "isAnyOf", list(window.days)),
            _constraint(TIME_OF_DAY, "gteq", _typed(window.start.isoformat() + "+08:00", "time")),
            _constraint(TIME_OF_DAY, "lteq", _typed(window.end.isoformat() + "+08:00", "time")),
        ]
    }


def _duty(path: str, masking: Masking) -> dict[str, Any]:
    """A masking rule as an ``anonymize`` duty (ODRL Vocabulary §3 actions) refined (§2.5.1
    refinement) by the field it applies to and the rule."""
    refinement = [
        _constraint(FIELD, "eq", path),
        _constraint(MASK_RULE, "eq", masking.rule.value),
    ]
    if masking.params:
        # A JSON literal (JSON-LD 1.1 §4.2.2): the parameters as the agreement states them.
        refinement.append(
            _constraint(MASK_PARAMS, "eq", {"@value": dict(masking.params), "@type": "@json"})
        )
    return {"action": [{"rdf:value": {"@id": "odrl:anonymize"}, "refinement": refinement}]}


def to_odrl(agreement: Agreement, base_url: str) -> dict[str, Any]:
    """The agreement as an ODRL 2.2 ``Agreement`` policy in JSON-LD; ``base_url`` is the hub's
    public URL, from which party, asset and policy IRIs are made."""
    base = base_url.rstrip("/")
    provider, consumer, resource = agreement.provider, agreement.consumer, agreement.resource

    constraints: list[dict[str, Any]] = [
        # ODRL Vocabulary: purpose; the codes are the agreement's own.
        _constraint("purpose", "isAnyOf", list(agreement.purposes)),
        # The validity window: from valid_from (inclusive) to valid_until (exclusive).
        _constraint("dateTime", "gteq", _typed(agreement.valid_from.isoformat(), "dateTime")),
        _constraint("dateTime", "lt", _typed(agreement.valid_until.isoformat(), "dateTime")),
        _constraint(HTTP_METHOD, "isAnyOf", list(agreement.operations.methods)),
        _constraint(PATH, "isAnyOf", list(agreement.operations.paths)),
    ]
    if consumer.apps:
        # ODRL Vocabulary: systemDevice, the calling apps as Qiao client identifiers.
        apps = [f"{agreement.instance}/{consumer.org}/{app}" for app in consumer.apps]
        constraints.append(_constraint("systemDevice", "isAnyOf", apps))
    if agreement.fields is not None:
        # The projection: only these fields of each record may be used.
        constraints.append(_constraint(FIELD, "isAnyOf", list(agreement.fields)))
    if agreement.daily_quota is not None:
        # ODRL Vocabulary: count, here per calendar day in China Standard Time.
        constraints.append(_constraint("count", "lteq", agreement.daily_quota, unit=PER_DAY))
    if agreement.rate_limit is not None:
        window = _typed(f"PT{agreement.rate_limit.per_seconds}S", "duration")
        constraints.append(
            _constraint(
                "count",
                "lteq",
                agreement.rate_limit.requests,
                unit=PER_ELAPSED_TIME,
                **{ELAPSED_TIME: window},
            )
        )
    conditions = agreement.conditions
    if conditions.time_windows:
        windows = [_window(w) for w in conditions.time_windows]
        constraints.append(windows[0] if len(windows) == 1 else {"or": windows})
    if conditions.end_user_required:
        constraints.append(_constraint(END_USER, "eq", True))
    if conditions.emergency_only:
        constraints.append(_constraint(EMERGENCY, "eq", True))

    permission: dict[str, Any] = {
        "target": (
            f"{base}/api/v1/catalog/resources/{provider.org}/{resource.code}"
            f"?version={resource.version}"
        ),
        # ODRL Vocabulary §3: "read" covers obtaining data only; "use" is the most general.
        "action": "read" if set(agreement.operations.methods) <= READ_ONLY else "use",
        "constraint": constraints,
    }
    if agreement.masking:
        permission["duty"] = [_duty(path, m) for path, m in sorted(agreement.masking.items())]

    # §2.1 Policy: uid and (for an Agreement, §2.1.3) both parties.
    return {
        "@context": CONTEXT,
        "@type": "Agreement",
        "uid": f"{base}/api/v1/agreements/{agreement.id}",
        "profile": PROFILE,
        "assigner": f"{base}/api/v1/organizations/{provider.org}",
        "assignee": f"{base}/api/v1/organizations/{consumer.org}",
        SHA256: agreement.sha256(),
        INSTANCE: agreement.instance,
        "permission": [permission],
    }
