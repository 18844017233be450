"""The policy a node enforces: the configuration's agreements and emergencies, compiled.

Both nodes decide every call from the same signed configuration (the consumer node to reject
early, the provider node with authority). The configuration is compiled into a ``Policy``
once, when it arrives: each agreement is verified (hash and both signatures, qiao.agreements.
document), its terms turned into sets and tuples, and indexed by (consumer org, provider org,
resource). A decision is then a dict lookup and a few comparisons, with no I/O.

An agreement that does not verify is not dropped: it is kept with what failed, so a call
under it is refused naming the failure (AGREEMENT_INVALID at the consumer's node,
PROVIDER_AGREEMENT_INVALID at the provider's) instead of a bare "no agreement".
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qiao import problems
from qiao.agreements.document import (
    CST,
    Agreement,
    AgreementInvalid,
    AgreementState,
    MaskRule,
    TimeWindow,
    digest,
    verify,
)
from qiao.problems import Problem

log = logging.getLogger("qiao.agreements.policy")

Side = Literal["consumer", "provider"]
# Query parameters whose values name fields, compared case-insensitively and by the name
# before any "[" (so fields[]= and JSON:API's fields[vehicle]= count too). The fields a caller
# wants back (?fields=plate,code, ?select=, OData's $select=):
FIELD_SELECTORS = frozenset({"fields", "select", "$select"})
# the fields it sorts by (sorting on a field orders the records by its real value, even when
# the answer masks it: a comparison oracle, as good as a filter):
SORT_KEYS = frozenset({"sort", "sort_by", "order", "order_by", "orderby", "$orderby"})
# and filter expressions (OData's $filter=driver_mobile eq '1'), every name in them.
FILTER_EXPRESSIONS = frozenset({"filter", "$filter"})

# How close a refused call came to being admitted, in the order the checks run. When several
# agreements cover the organization pair and the resource and none admits the call, the
# refusal reported is that of the agreement that got furthest: a caller who is refused for a
# missing purpose under its current agreement learns that, not that an old one expired. An
# agreement that does not name the calling app is the furthest away (it is not the caller's);
# one that does not verify cannot be read beyond that fact; then the published state, the
# validity window, the emergency condition, the time of day, and last the terms of the call
# itself (purpose, end user, operation, fields), which the caller can fix. The order is the
# one docs/agreements.md ("Enforcement at both nodes") lists.
_NOT_THE_APP, _INVALID, _REVOKED, _SUSPENDED, _VALIDITY, _EMERGENCY, _TIME = range(7)
_PURPOSE, _END_USER, _OPERATION, _FIELD = range(7, 11)


@dataclass(frozen=True)
class Decision:
    """A call admitted: under which agreement (and, if only by one, which emergency)."""

    agreement: Agreement
    sha256: str
    emergency: str = ""  # the emergency's id if the call was admitted under one


@dataclass(frozen=True)
class Emergency:
    id: str
    reason: str
    resources: frozenset[str]  # "{org}/{code}"; empty = every resource
    organizations: frozenset[str]  # consumer organizations; empty = every organization
    starts_at: datetime
    expires_at: datetime

    def covers(self, consumer_org: str, resource: str, now: datetime) -> bool:
        return (
            self.starts_at <= now < self.expires_at
            and (not self.resources or resource in self.resources)
            and (not self.organizations or consumer_org in self.organizations)
        )


@dataclass(frozen=True)
class InvalidAgreement:
    """A published agreement that does not verify, and exactly why."""

    id: str
    sha256: str
    reason: str


Pattern = tuple[str, ...]
# A field path as a request may name it, normalized: ("owner", "mobile") for owner.mobile,
# owner[mobile], owner[0][mobile], Owner.Mobile or owner/mobile.
FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class CompiledAgreement:
    """One agreement's terms, shaped for the hot path."""

    agreement: Agreement | None  # None when it did not verify
    sha256: str
    id: str
    state: AgreementState
    state_reason: str
    invalid: str = ""  # what did not verify; "" if it did
    apps: frozenset[str] = frozenset()  # "{instance}/{org}/{app}"; empty = every app
    methods: frozenset[str] = frozenset()
    patterns: tuple[Pattern, ...] = ()
    any_path: bool = False
    purposes: frozenset[str] = frozenset()
    # Field paths the caller may neither see, select, sort by nor filter on (with the name to
    # report); for an object the projection names only parts of, those parts; and the paths
    # masked by the pseudonym rule, which may be selected but not filtered on (see _hidden).
    hidden: dict[FieldPath, str] = field(default_factory=dict)
    partial: dict[str, frozenset[FieldPath]] = field(default_factory=dict)
    pseudonymized: dict[FieldPath, str] = field(default_factory=dict)
    windows: tuple[TimeWindow, ...] = ()
    emergency_only: bool = False
    end_user_required: bool = False


@dataclass
class Policy:
    """Agreements and emergencies of one configuration, compiled (see the module doc)."""

    by_parties: dict[tuple[str, str, str], tuple[CompiledAgreement, ...]] = field(
        default_factory=dict
    )
    emergencies: tuple[Emergency, ...] = ()
    invalid: tuple[InvalidAgreement, ...] = ()
    agreements: dict[str, Agreement] = field(default_factory=dict)  # verified, by id

    def decide(
        self,
        client: str,
        provider_org: str,
        resource: str,
        method: str,
        rest_path: str,
        query: Mapping[str, str],
        purpose: str,
        end_user: str,
        now: datetime,
        side: Side,
    ) -> Decision:
        """Admit the call ``client`` (``{instance}/{org}/{app}``) makes to ``provider_org``'s
        ``resource`` (``rest_path`` below it, ``query`` its parameters) at ``now``, or raise
        the Problem of the most specific refusal. Any one agreement that admits the call
        admits it; one without an emergency is preferred."""
        consumer_org = client.split("/", 2)[1] if client.count("/") == 2 else ""
        candidates = self.by_parties.get((consumer_org, provider_org, resource), ())
        best: tuple[int, Problem] | None = None
        for entry in candidates:  # non-emergency agreements come first (see compile_policy)
            outcome = self._check(
                entry, client, consumer_org, provider_org, resource, method, rest_path,
                query, purpose, end_user, now, side,
            )  # fmt: skip
            if isinstance(outcome, Decision):
                return outcome
            if best is None or outcome[0] > best[0]:
                best = outcome
        if best is not None:
            raise best[1]
        raise Problem(
            problems.NO_AGREEMENT, f"no agreement lets {client} use {provider_org}/{resource}"
        )

    def _check(
        self,
        e: CompiledAgreement,
        client: str,
        consumer_org: str,
        provider_org: str,
        resource: str,
        method: str,
        rest_path: str,
        query: Mapping[str, str],
        purpose: str,
        end_user: str,
        now: datetime,
        side: Side,
    ) -> Decision | tuple[int, Problem]:
        name = f"agreement {e.id}"
        if e.invalid:
            kind = (
                problems.AGREEMENT_INVALID
                if side == "consumer"
                else problems.PROVIDER_AGREEMENT_INVALID
            )
            return _INVALID, Problem(kind, f"{name} does not verify: {e.invalid}")
        a = e.agreement
        assert a is not None
        if e.apps and client not in e.apps:
            return _NOT_THE_APP, Problem(
                problems.NO_AGREEMENT,
                f"{name} does not name {client} among its apps; no agreement lets it use "
                f"{provider_org}/{resource}",
            )
        if e.state is AgreementState.REVOKED:
            why = f": {e.state_reason}" if e.state_reason else ""
            return _REVOKED, Problem(problems.AGREEMENT_REVOKED, f"{name} was revoked{why}")
        if e.state is AgreementState.SUSPENDED:
            why = f": {e.state_reason}" if e.state_reason else ""
            return _SUSPENDED, Problem(problems.AGREEMENT_SUSPENDED, f"{name} is suspended{why}")
        if now < a.valid_from:
            return _VALIDITY, Problem(
                problems.AGREEMENT_NOT_YET_VALID,
                f"{name} is in force from {a.valid_from.isoformat()}",
            )
        if now >= a.valid_until:
            return _VALIDITY, Problem(
                problems.AGREEMENT_EXPIRED, f"{name} expired at {a.valid_until.isoformat()}"
            )
        emergency = ""
        if e.emergency_only:
            key = f"{provider_org}/{resource}"
            for em in self.emergencies:
                if em.covers(consumer_org, key, now):
                    emergency = em.id
                    break
            else:
                return _EMERGENCY, Problem(
                    problems.EMERGENCY_ONLY,
                    f"{name} is usable only while a declared emergency covers {key} for "
                    f"{consumer_org}, and none does now",
                )
        if e.windows and not _in_windows(e.windows, now):
            return _TIME, Problem(
                problems.OUTSIDE_TIME_WINDOW,
                f"{name} allows calls only {_describe(e.windows)} (China Standard Time)",
            )
        if purpose not in e.purposes:
            allowed = ", ".join(sorted(e.purposes))
            said = f"{purpose!r} is not" if purpose else "X-Qiao-Purpose is missing; it must be"
            return _PURPOSE, Problem(
                problems.PURPOSE_NOT_ALLOWED,
                f"{said} one of the purposes {name} allows: {allowed}",
                {"allowed_purposes": sorted(e.purposes)},
            )
        if e.end_user_required and not end_user:
            return _END_USER, Problem(
                problems.END_USER_REQUIRED,
                f"{name} requires X-Qiao-User to name the person the call is made for",
            )
        if method not in e.methods or not (e.any_path or _path_allowed(e.patterns, rest_path)):
            return _OPERATION, Problem(
                problems.OPERATION_NOT_ALLOWED,
                f"{name} allows {', '.join(a.operations.methods)} on "
                f"{', '.join(repr(p) for p in a.operations.paths)}, not {method} {rest_path!r}",
            )
        if e.hidden or e.partial or e.pseudonymized:
            asked = _hidden_asked(e, rest_path, query)
            if asked:
                return _FIELD, Problem(
                    problems.FIELD_NOT_ALLOWED,
                    f"{name} does not include the field {asked!r}: it may not be asked for, "
                    "filtered on or selected, by path or query",
                )
        return Decision(a, e.sha256, emergency)


def _in_windows(windows: tuple[TimeWindow, ...], now: datetime) -> bool:
    local = now.astimezone(CST)
    day, t = local.isoweekday(), local.time().replace(microsecond=0, tzinfo=None)
    return any(day in w.days and w.start <= t <= w.end for w in windows)


def _describe(windows: tuple[TimeWindow, ...]) -> str:
    return "; ".join(
        f"on days {','.join(map(str, w.days))} from {w.start.isoformat()} to {w.end.isoformat()}"
        for w in windows
    )


def _compile_pattern(pattern: str) -> Pattern:
    return tuple(pattern.split("/")) if pattern else ()


def _path_allowed(patterns: tuple[Pattern, ...], rest_path: str) -> bool:
    """Operation path patterns (qiao.agreements.document.PATH_PATTERN): "*" matches exactly
    one segment, a final "**" any rest (also none), anything else itself."""
    segments = rest_path.split("/") if rest_path else []
    return any(_matches(pattern, segments) for pattern in patterns)


def _matches(pattern: Pattern, segments: list[str]) -> bool:
    for i, part in enumerate(pattern):
        if part == "**" and i == len(pattern) - 1:
            return True
        if i >= len(segments) or (part != "*" and part != segments[i]):
            return False
        if part == "*" and segments[i] == "":
            return False
    return len(segments) == len(pattern)


def _hidden_asked(e: CompiledAgreement, rest_path: str, query: Mapping[str, str]) -> str:
    """The first field outside what the caller may see that the request names, or "".

    Not only a field asked back is a leak: a filter on a hidden field (``?driver_mobile=
    138...``, or ``/by-mobile/138...`` spelt as a path segment) answers "is there a record
    whose hidden value is X?" — the records that come back, even with the field removed,
    confirm the value, and repeated filters recover it by inference (a membership oracle).
    So a hidden field may be neither selected, sorted by nor used to filter. A pseudonymized
    field may be selected (the answer carries only its pseudonym), but a filter or a sort on
    its real value would map identities to pseudonyms.

    Names are compared as the backend may read them, which Qiao does not know: case-
    insensitively, nested ones by their path (``owner.mobile``, ``owner[mobile]``), and
    percent-decoded until nothing changes (``rest_path`` and the query arrive decoded once by
    aiohttp, and the provider passes the raw target on to the backend, which decodes it once
    more or not at all). Refusing a parameter that only looks like a hidden field costs a
    rephrased call; admitting one that is a hidden field leaks it."""
    if rest_path:
        for segment in rest_path.split("/"):
            asked = _hidden_name(e, segment, filtering=True)
            if asked:
                return asked
    for name, value in query.items():
        asked = _hidden_name(e, name, filtering=True)
        if asked:
            return asked
        path = _field_path(name)
        if not path:
            continue
        if path[0] in FIELD_SELECTORS or path[0] in SORT_KEYS:
            sorting = path[0] in SORT_KEYS
            for wanted in _decoded(value).split(","):
                # "-driver_mobile" (descending) and "driver_mobile desc" name the field too.
                words = wanted.strip().lstrip("+-").split()
                asked = _hidden_name(e, words[0], filtering=sorting) if words else ""
                if asked:
                    return asked
        elif path[0] in FILTER_EXPRESSIONS:
            for word in _EXPRESSION_NAME.findall(_decoded(value)):
                asked = _hidden_name(e, word, filtering=True)
                if asked:
                    return asked
    return ""


# A name in a filter expression: a letter or "_" first, then word characters and the
# separators of a nested name (digits alone, operators and quoted strings' spaces are not).
_EXPRESSION_NAME = re.compile(r"[^\W\d][\w.\[\]/]*")
_PATH_SEPARATORS = re.compile(r"[.\[\]/]")


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it no longer changes (bounded: each round shortens it)."""
    for _ in range(4):
        if "%" not in text:
            break
        plain = unquote(text, errors="replace")
        if plain == text:
            break
        text = plain
    return text


def _field_path(name: str) -> FieldPath:
    """The field path a parameter name or path segment names: decoded, case-folded, split at
    ".", "[", "]" and "/", without matrix parameters (RFC 3986 §3.3 ";...") or array indices."""
    text = _decoded(name).split(";", 1)[0].casefold()
    parts = [part.strip() for part in _PATH_SEPARATORS.split(text)]
    head, *rest = [part for part in parts if part] or [""]
    if not head:
        return ()
    return (head, *(part for part in rest if not part.isdigit()))


def _hidden_name(e: CompiledAgreement, name: str, filtering: bool = False) -> str:
    """The hidden field ``name`` names (as the agreement calls it), or "". ``filtering``: the
    name is used to filter or sort, so a pseudonymized field counts as hidden too."""
    path = _field_path(name)
    if not path:
        return ""
    for n in range(1, len(path) + 1):  # a hidden object hides all below it
        hidden = e.hidden.get(path[:n])
        if hidden is None and filtering:
            hidden = e.pseudonymized.get(path[:n])
        if hidden is not None:
            return hidden if n == len(path) else ".".join((hidden, *path[n:]))
    # Only some of the object is projected: a path below it is visible when it is one of
    # those parts, lies below one, or is an object holding one.
    shown = e.partial.get(path[0])
    if (
        shown is not None
        and len(path) > 1
        and not any(path[: len(s)] == s or s[: len(path)] == path for s in shown)
    ):
        return ".".join(path)
    return ""


# Verifying two Ed25519 signatures per agreement on every new configuration would repeat
# the same work each serial: the outcome depends only on these inputs.
_VERIFIED: dict[tuple[str, str, str, str, str, str], Agreement | str] = {}
_VERIFIED_MAX = 10_000


def compile_policy(
    doc: Mapping[str, Any], resource_fields: Mapping[tuple[str, str], Any]
) -> Policy:
    """Compile a configuration document's "agreements", "emergencies" and organizations'
    "agreement_key"s. ``resource_fields`` maps (provider org, resource code) to the record's
    field names (None or empty when the catalog does not describe them). Documents without
    the sections compile to an empty policy (every call refused: no agreement)."""
    keys: dict[str, Ed25519PublicKey] = {}
    key_texts: dict[str, str] = {}
    for org in doc.get("organizations", ()):
        text = org.get("agreement_key") or ""
        if not text:
            continue
        try:
            keys[org["code"]] = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(text, validate=True)
            )
            key_texts[org["code"]] = text
        except (binascii.Error, ValueError) as exc:
            log.error("organization %s has an unusable agreement key: %s", org["code"], exc)
    by_parties: dict[tuple[str, str, str], list[CompiledAgreement]] = {}
    invalid: list[InvalidAgreement] = []
    verified: dict[str, Agreement] = {}
    for published in doc.get("agreements", ()):
        entry = _compile_one(published, keys, key_texts, resource_fields)
        if entry is None:
            continue
        if entry.invalid:
            invalid.append(InvalidAgreement(entry.id, entry.sha256, entry.invalid))
            log.warning("agreement %s does not verify: %s", entry.id, entry.invalid)
        elif entry.agreement is not None:
            verified[entry.id] = entry.agreement
        parties = _parties(published.get("agreement"))
        if parties is not None:
            by_parties.setdefault(parties, []).append(entry)
    emergencies = tuple(_emergency(e) for e in doc.get("emergencies", ()))
    return Policy(
        # Stable sort: emergency-only agreements after the others, so a call admitted by an
        # ordinary agreement is not flagged as an emergency access.
        by_parties={
            k: tuple(sorted(v, key=lambda e: e.emergency_only)) for k, v in by_parties.items()
        },
        emergencies=emergencies,
        invalid=tuple(invalid),
        agreements=verified,
    )


def _parties(document: Any) -> tuple[str, str, str] | None:
    """Who an agreement is between, read from the document as published (also when it does
    not verify, so that a call under a tampered agreement can be told so)."""
    try:
        return (
            str(document["consumer"]["org"]),
            str(document["provider"]["org"]),
            str(document["resource"]["code"]),
        )
    except (KeyError, TypeError):
        return None


def _compile_one(
    published: Mapping[str, Any],
    keys: dict[str, Ed25519PublicKey],
    key_texts: dict[str, str],
    resource_fields: Mapping[tuple[str, str], Any],
) -> CompiledAgreement | None:
    document = published.get("agreement")
    sha256 = str(published.get("sha256", ""))
    signatures = published.get("signatures") or {}
    raw_id = document.get("id") if isinstance(document, dict) else None
    agreement_id = raw_id if isinstance(raw_id, str) else f"sha256:{sha256[:16]}"
    try:
        state = AgreementState(published.get("state", "active"))
    except ValueError:
        state = AgreementState.SUSPENDED  # an unknown state admits nothing
    reason = str(published.get("reason", ""))
    if not isinstance(document, dict) or not isinstance(signatures, dict):
        return CompiledAgreement(
            None, sha256, agreement_id, state, reason, invalid="it is not a JSON object"
        )
    parties = _parties(document)
    try:
        # The key holds what the document actually hashes to, not only the published hash:
        # a document changed under an unchanged published hash must not hit a good entry.
        actual = digest(document)
    except (TypeError, ValueError):
        actual = ""
    cache_key = (
        actual,
        sha256,
        str(signatures.get("provider", "")),
        str(signatures.get("consumer", "")),
        key_texts.get(parties[1], "") if parties else "",
        key_texts.get(parties[0], "") if parties else "",
    )
    outcome = _VERIFIED.get(cache_key)
    if outcome is None:
        try:
            outcome = verify(document, sha256, signatures, keys)
        except AgreementInvalid as exc:
            outcome = str(exc)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[cache_key] = outcome
    if isinstance(outcome, str):
        return CompiledAgreement(None, sha256, agreement_id, state, reason, invalid=outcome)
    a = outcome
    fields = resource_fields.get((a.provider.org, a.resource.code)) or ()
    hidden, partial, pseudonymized = _hidden(fields, a)
    return CompiledAgreement(
        agreement=a,
        sha256=sha256,
        id=a.id,
        state=state,
        state_reason=reason,
        # The document names apps by code; calls name them as {instance}/{org}/{app}.
        apps=frozenset(f"{a.instance}/{a.consumer.org}/{app}" for app in a.consumer.apps),
        methods=frozenset(a.operations.methods),
        patterns=tuple(_compile_pattern(p) for p in a.operations.paths),
        any_path="**" in a.operations.paths,
        purposes=frozenset(a.purposes),
        hidden=hidden,
        partial=partial,
        pseudonymized=pseudonymized,
        windows=a.conditions.time_windows,
        emergency_only=a.conditions.emergency_only,
        end_user_required=a.conditions.end_user_required,
    )


def _hidden(
    fields: Iterable[str], a: Agreement
) -> tuple[dict[FieldPath, str], dict[str, frozenset[FieldPath]], dict[FieldPath, str]]:
    """What the agreement does not let the caller see, in request terms (see _field_path):

    - the resource's fields outside the projection (by the field or a path below it);
    - fields suppressed by the masking rules (as absent as unprojected ones);
    - for an object the projection names only parts of (``owner.name``), those parts: the
      object's other paths are hidden (returned separately, as the catalog lists only
      top-level fields);
    - and, for filters and sorts only, fields masked by the ``pseudonym`` rule: the answer
      shows a keyed HMAC, so a filter on the real value (``?citizen_id=440305...``) would map
      identities to pseudonyms. Fields masked partially (plate, mobile, citizen-id, ...) stay
      usable as filters on purpose: a department looking up a plate it already holds is the
      core use (docs/agreements.md, "Enforcement at both nodes", states the residual risk)."""
    hidden: dict[FieldPath, str] = {}
    partial: dict[str, set[FieldPath]] = {}
    whole: set[str] = set()
    for projected in a.fields or ():
        path = _field_path(projected)
        if len(path) == 1:
            whole.add(path[0])
        elif path:
            partial.setdefault(path[0], set()).add(path)
    if a.fields is not None:
        for f in fields:
            key = _field_path(f)
            if key and key[0] not in whole and key[0] not in partial:
                hidden[key] = f
    pseudonymized: dict[FieldPath, str] = {}
    for masked, m in a.masking.items():
        key = _field_path(masked)
        if key and m.rule is MaskRule.SUPPRESS:
            hidden[key] = masked.replace("[]", "")
        elif key and m.rule is MaskRule.PSEUDONYM:
            pseudonymized[key] = masked.replace("[]", "")
    shown = {top: frozenset(paths) for top, paths in partial.items() if top not in whole}
    return hidden, shown, pseudonymized


def _emergency(e: Mapping[str, Any]) -> Emergency:
    return Emergency(
        id=str(e["id"]),
        reason=str(e.get("reason", "")),
        resources=frozenset(e.get("resources") or ()),
        organizations=frozenset(e.get("organizations") or ()),
        starts_at=datetime.fromisoformat(e["starts_at"]),
        expires_at=datetime.fromisoformat(e["expires_at"]),
    )
