"""Masking (脱敏) and minimization: what the provider node does to records before they leave.

Minimization first: with a projection, only the listed fields (and their sub-trees) of a record
leave the provider node; every other key, including one a backend adds later that the catalog
does not know, is dropped (GB/T 35273-2020 §5.2 最小必要, §3.14 去标识化). Then each masked
field is de-identified by its rule. The rules and why:

- ``citizen-id``  ``440305199001011234`` -> ``440305********1234``: region code and the last 4
  stay, so a person can recognise their own record; the birth date and sequence go
  (GB/T 37964-2019 屏蔽/masking).
- ``mobile``  ``13812345678`` -> ``138****5678``: carrier prefix and last 4, the usual
  confirmation form (GB/T 37964-2019 屏蔽).
- ``name``  ``张三丰`` -> ``张**``, ``欧阳娜娜`` -> ``欧阳**``: the surname (compound
  surnames keep both characters), one star per given-name character (屏蔽).
- ``address``  ``广东省桥城市南山区科技园路1号`` -> ``广东省桥城市南山区****``: down to the
  district (区/县/旗 after the 市), which locates without identifying (GB/T 37964-2019
  泛化/generalization); no district found -> the first 6 characters.
- ``plate``  ``粤B12345`` -> ``粤B****5``, ``粤BD12345`` -> ``粤B*****5``: province and issuing
  authority stay (屏蔽).
- ``bank-card``  ``6222 0212 3456 7890 123`` -> ``622202*********0123``: issuer (BIN) and last 4,
  as on a receipt (屏蔽).
- ``email``  ``zhang.san@example.cn`` -> ``z***@example.cn``: first character and the domain.
- ``pseudonym``  ``440305199001011234`` -> ``ps_…`` (24 base32 characters): HMAC-SHA256 keyed
  per consumer, provider and resource (``pseudonym_key``) over the field path and the value's
  RFC 8785 form, so the same value gives the same pseudonym to one consumer of one resource,
  renewals included (joins work), and nothing links across consumers or resources
  (GB/T 35273-2020 §3.14 去标识化; GB/T 37964-2019 假名化 with a keyed hash).
- ``birth-year``  ``1990-01-01`` -> ``1990``, ``440305199001011234`` -> ``1990``: a date, or the
  birth date inside a citizen ID, generalized to its year (泛化).
- ``age-band``  ``34`` -> ``30-39`` (param ``width``, default 10; ``>= 100`` -> ``100+``) (泛化).
- ``suppress``  the key is removed (GB/T 37964-2019 抑制).

A value that a rule cannot mask (wrong type, too short) keeps no information: a string becomes
as many ``*`` as it has characters, any other value ``null``; ``null`` stays ``null``. An
unmaskable value is never passed through (GB/T 35273-2020 §3.14: de-identified data must not
identify the person without extra information).

Field paths use ``document.FIELD_PATH``: names joined by ``.``, ``[]`` after a name for each
element of an array. Where a path expects an object and the record has an array of objects
there, the path applies to each element, so a mismatch never lets a masked field through.

Performance: a projection and its rules compile once per agreement into closures; applying
them is a walk over the record's keys with a dictionary lookup each (bench/masking.py).
Sub-trees kept whole are shared with the input, not copied; the input is never modified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from qiao.agreements.document import Masking, MaskRule
from qiao.canonical import canonical_json

# A leaf rule: the (non-null) value in, the masked value out.
Rule = Callable[[Any], Any]
# A compiled field: the field's value in, its value out, or DROP to remove the key.
Step = Callable[[Any], Any]


class _Drop:
    """Sentinel: the key is removed from its object."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP: Final = _Drop()

# Two-character surnames (复姓) in current use; a name starting with one keeps both characters.
COMPOUND_SURNAMES: Final = frozenset(
    {
        "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容",
        "长孙", "宇文", "司徒", "夏侯", "轩辕", "令狐", "钟离", "澹台",
    }
)  # fmt: skip
_SEPARATORS = re.compile(r"[\s\-·・.]")
_DISTRICT = re.compile(r"[区县旗]")
_DIGIT = re.compile(r"[0-9０-９]")
_DATE = re.compile(r"^([0-9]{4})-[0-9]{2}-[0-9]{2}")
_YEAR = re.compile(r"^[0-9]{4}$")
# The longest prefix an address rule keeps: division names end long before this; a longer
# prefix means the 区/县/旗 found belongs to a street or a shop name, not a division.
_ADDRESS_PREFIX_MAX = 32
PSEUDONYM_PREFIX: Final = "ps_"


def _stars(value: Any) -> Any:
    """What an unmaskable value becomes: nothing of it survives but a string's length."""
    return "*" * len(value) if isinstance(value, str) else None


def _keep(value: Any, head: int, tail: int, minimum: int) -> Any:
    """Keep ``head`` leading and ``tail`` trailing characters, star the rest; a string shorter
    than ``minimum`` (which would show too much) and a non-string are unmaskable."""
    if not isinstance(value, str) or len(value) < minimum:
        return _stars(value)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def mask_citizen_id(value: Any) -> Any:
    """GB 11643 number: region (6) and the last 4; an 18-character ID -> 6 + 8 stars + 4."""
    if isinstance(value, str):
        compact = value.replace(" ", "")
        if len(compact) >= 11:
            return _keep(compact, 6, 4, 11)
    return _stars(value)


def mask_mobile(value: Any) -> Any:
    """138****5678: the first 3 and the last 4 (spaces and dashes removed first)."""
    if isinstance(value, str):
        compact = _SEPARATORS.sub("", value)
        if len(compact) >= 8:
            return _keep(compact, 3, 4, 8)
    return _stars(value)


def mask_name(value: Any) -> Any:
    """The surname (two characters for a compound surname) and a star per other character."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    surname = 2 if len(name) >= 3 and name[:2] in COMPOUND_SURNAMES else 1
    if len(name) <= surname:
        return _stars(value)
    return name[:surname] + "*" * (len(name) - surname)


def mask_address(value: Any) -> Any:
    """Down to the district: through the first 区/县/旗 after the first 市 (or the first
    区/县/旗 when there is no 市), then ****; else the first 6 characters and ****."""
    if not isinstance(value, str):
        return None
    city = value.find("市")
    found = _DISTRICT.search(value, city + 1 if city >= 0 else 0)
    if found is not None:
        kept = value[: found.end()]
        # A division name has no digits and is short; otherwise the match is a street's.
        if len(kept) <= _ADDRESS_PREFIX_MAX and not _DIGIT.search(kept):
            return kept + "****"
    if len(value) <= 6:
        return _stars(value)
    return value[:6] + "****"


def mask_plate(value: Any) -> Any:
    """GA 36 plate: province, issuing letter and the last character (粤B12345 -> 粤B****5,
    粤BD12345 -> 粤B*****5); the "·", spaces and dashes of a displayed plate go first."""
    if isinstance(value, str):
        compact = _SEPARATORS.sub("", value)
        if len(compact) >= 6:
            return _keep(compact, 2, 1, 6)
    return _stars(value)


def mask_bank_card(value: Any) -> Any:
    """First 6 (the issuer's BIN) and last 4 digits, spaces and dashes removed first."""
    if isinstance(value, str):
        compact = _SEPARATORS.sub("", value)
        if len(compact) >= 11:
            return _keep(compact, 6, 4, 11)
    return _stars(value)


def mask_email(value: Any) -> Any:
    """z***@example.cn: the first character of the local part and the domain."""
    if isinstance(value, str):
        local, at, domain = value.rpartition("@")
        if at and local and domain:
            return local[0] + "***@" + domain
    return _stars(value)


def mask_birth_year(value: Any) -> Any:
    """A date (YYYY-MM-DD…) or a citizen ID (18 characters; 15 for the old 19xx form) -> YYYY.
    A bare year is already generalized and stays."""
    if not isinstance(value, str):
        return None
    date = _DATE.match(value)
    if date is not None:
        return date.group(1)
    if _YEAR.match(value):
        return value
    compact = value.replace(" ", "")
    if len(compact) == 18 and compact[6:10].isdigit() and compact[6:10].isascii():
        return compact[6:10]
    if len(compact) == 15 and compact.isdigit() and compact.isascii():
        return "19" + compact[6:8]
    return _stars(value)


def age_band(width: int) -> Rule:
    """An integer age -> its band of ``width`` years ("30-39"); 100 and over -> "100+"."""

    def mask(value: Any) -> Any:
        if type(value) is not int or value < 0:  # bool is an int too: not an age
            return _stars(value)
        if value >= 100:
            return "100+"
        low = value // width * width
        return f"{low}-{min(low + width - 1, 99)}"

    return mask


def pseudonym(key: bytes, path: str) -> Rule:
    """ps_ + base32 of the first 15 bytes of HMAC-SHA256(key, path NUL canonical value):
    stable per key and field, different across keys (RFC 2104 keyed hash)."""
    prefix = path.encode() + b"\0"

    def mask(value: Any) -> Any:
        try:
            message = prefix + canonical_json(value)
        except (TypeError, ValueError, OverflowError):
            return None  # no canonical form (e.g. an integer beyond I-JSON): keep nothing
        mac = hmac.new(key, message, hashlib.sha256).digest()[:15]
        return PSEUDONYM_PREFIX + base64.b32encode(mac).decode().lower()

    return mask


_RULES: Final[dict[MaskRule, Rule]] = {
    MaskRule.CITIZEN_ID: mask_citizen_id,
    MaskRule.MOBILE: mask_mobile,
    MaskRule.NAME: mask_name,
    MaskRule.ADDRESS: mask_address,
    MaskRule.PLATE: mask_plate,
    MaskRule.BANK_CARD: mask_bank_card,
    MaskRule.EMAIL: mask_email,
    MaskRule.BIRTH_YEAR: mask_birth_year,
}


def _unmaskable(value: Any) -> Any:
    return _stars(value)


def rule_for(masking: Masking, path: str, pseudonym_key: bytes) -> Rule | None:
    """The leaf function of one rule (None for suppress). A rule whose parameters do not make
    sense masks every value to null rather than guessing (fail closed)."""
    if masking.rule is MaskRule.SUPPRESS:
        return None
    if masking.rule is MaskRule.PSEUDONYM:
        return pseudonym(pseudonym_key, path)
    if masking.rule is MaskRule.AGE_BAND:
        width = masking.params.get("width", 10)
        try:
            width = int(width)
        except ValueError:
            return _unmaskable
        return age_band(width) if width >= 1 else _unmaskable
    return _RULES[masking.rule]


# --- compilation ---------------------------------------------------------------------------


@dataclass
class _Node:
    """One field of the projection tree before compilation."""

    whole: bool = False  # listed itself: its whole sub-tree is kept
    children: dict[str, _Node] = field(default_factory=dict)
    suppress: bool = False
    rule: Rule | None = None
    each: bool = False  # the rule's path ended in "[]": apply it to each element
    path: str = ""


def _segments(path: str) -> list[tuple[str, bool]]:
    return [(s[:-2], True) if s.endswith("[]") else (s, False) for s in path.split(".")]


def _build(
    fields: tuple[str, ...] | None, masking: Mapping[str, Masking], pseudonym_key: bytes
) -> _Node:
    root = _Node(whole=fields is None)
    for path in fields or ():
        node = root
        for name, _ in _segments(path):
            node = node.children.setdefault(name, _Node())
        node.whole = True
    for path in sorted(masking):
        node = root
        covered = root.whole
        for name, _ in _segments(path):
            child = node.children.get(name)
            if child is None:
                if not covered:
                    break  # outside the projection: the field is dropped anyway
                child = node.children[name] = _Node(whole=True)
            covered = covered or child.whole
            node = child
        else:
            rule = rule_for(masking[path], path, pseudonym_key)
            if node.suppress or node.rule is not None or rule is None:
                # suppress, or two rules for one field ("tags" and "tags[]"): remove it,
                # the only choice that cannot leak.
                node.suppress, node.rule = True, None
            else:
                node.rule, node.each, node.path = rule, path.endswith("[]"), path
    return root


def _compile(node: _Node) -> Step | None:
    """A node's step, or None when its value is kept as it is."""
    if node.suppress:
        return lambda value: DROP
    inner = _compile_object(node) if node.children or not node.whole else None
    if node.rule is None:
        return inner
    rule: Rule = node.rule
    if node.each:

        def leaf(value: Any) -> Any:
            if value is None:
                return None
            if inner is not None:
                value = inner(value)
                if value is DROP:
                    return DROP
            if isinstance(value, list):
                return [None if v is None else rule(v) for v in value]
            return rule(value)

        return leaf

    def masked(value: Any) -> Any:
        if value is None:
            return None
        if inner is not None:
            value = inner(value)
            if value is DROP:
                return DROP
        return rule(value)

    return masked


def _compile_object(node: _Node) -> Step:
    """The step of an object field: a listed-whole object keeps every key and runs the steps
    of its masked descendants; a partly listed one keeps only its listed keys. An array there
    is each element; any other value where an object was expected is dropped (or null in an
    array), since only the sub-fields were agreed, not the value."""
    steps = {name: _compile(child) for name, child in node.children.items()}
    whole = node.whole
    active = {name: step for name, step in steps.items() if step is not None}

    def step_object(value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any]
        if whole:
            out = dict(value)
            for name, child in active.items():
                if name in out:
                    result = child(out[name])
                    if result is DROP:
                        del out[name]
                    else:
                        out[name] = result
            return out
        out = {}
        for name, item in value.items():
            if name in steps:
                child_step = steps[name]
                if child_step is None:
                    out[name] = item
                else:
                    result = child_step(item)
                    if result is not DROP:
                        out[name] = result
        return out

    def step(value: Any) -> Any:
        if isinstance(value, dict):
            return step_object(value)
        if isinstance(value, list):
            results = [step(v) for v in value]
            return [None if r is DROP else r for r in results]
        if whole:
            return value  # a leaf listed whole, with masked "sub-fields" it does not have
        return DROP

    return step


class RecordMasker:
    """Projection and masking of one agreement, compiled once and applied per record."""

    #: False when the agreement neither projects nor masks: the answer passes untouched.
    active: bool

    def __init__(self, step: Step | None) -> None:
        self._step = step
        self.active = step is not None

    def apply(self, record: Any) -> Any:
        """The record with only the projected fields, each masked by its rule (a new value;
        the argument is not modified). A record that is not a JSON object has no fields to
        project or mask, so nothing of it is agreed: it becomes null."""
        if self._step is None:
            return record
        if not isinstance(record, dict):
            return None
        return self._step(record)

    def apply_document(
        self, document: Any, records_at: str, record_fields: frozenset[str] = frozenset()
    ) -> Any:
        """Apply to the records at the JSON Pointer ``records_at`` (RFC 6901) of a response
        document ("" is the document itself): an array there is each element, an object is one
        record. The envelope around the records (the containers on the way to them) keeps
        its scalar members, such as totals and cursors, but loses every object or array
        member off the path, since it could carry records no projection has seen; a member
        named like one of ``record_fields`` is treated as that field (projected and masked
        by its rule: a lookup by plate may answer {"plate": …, "violations": […]}). Raises
        RecordsNotFound when the pointer is malformed or does not resolve: the records
        cannot be found, so nothing can be masked."""
        if self._step is None:
            return document
        tokens = pointer_tokens(records_at)
        if tokens is None:
            raise RecordsNotFound(records_at)
        return self._envelope(document, tokens, records_at, record_fields)

    def _envelope(
        self, node: Any, tokens: list[str], records_at: str, record_fields: frozenset[str]
    ) -> Any:
        if not tokens:
            return self._records(node)
        token, rest = tokens[0], tokens[1:]
        if isinstance(node, dict):
            if token not in node:
                raise RecordsNotFound(records_at)
            out: dict[str, Any] = {}
            named: dict[str, Any] = {}
            for name, value in node.items():
                if name == token:
                    out[name] = self._envelope(value, rest, records_at, record_fields)
                elif name in record_fields:
                    named[name] = out[name] = value
                elif not isinstance(value, (dict, list)):
                    out[name] = value
            if named:
                kept = self.apply(named)
                for name in named:
                    if name in kept:
                        out[name] = kept[name]
                    else:
                        del out[name]
            return out
        if isinstance(node, list):
            # RFC 6901 §4: an array index is digits without leading zeros; "-" never resolves.
            if not _INDEX.match(token) or int(token) >= len(node):
                raise RecordsNotFound(records_at)
            index = int(token)
            # The other elements keep their places (so the pointer still resolves for the
            # consumer); those that could hold records become null.
            items = [None if isinstance(v, (dict, list)) else v for v in node]
            items[index] = self._envelope(node[index], rest, records_at, record_fields)
            return items
        raise RecordsNotFound(records_at)

    def _records(self, target: Any) -> Any:
        if isinstance(target, list):
            return [self.apply(record) for record in target]
        return self.apply(target)


class RecordsNotFound(ValueError):
    """A response document in which the catalog's ``records_at`` pointer finds nothing."""

    def __init__(self, pointer: str) -> None:
        super().__init__(f"the records pointer {pointer!r} does not resolve in the answer")
        self.pointer = pointer


def pointer_tokens(pointer: str) -> list[str] | None:
    """RFC 6901 §3-4: "" is the whole document, else "/"-separated reference tokens with
    "~1" for "/" and "~0" for "~" (decoded in that order). None for a malformed pointer."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None
    tokens = pointer[1:].split("/")
    if any(_BAD_ESCAPE.search(t) for t in tokens):
        return None  # §3: "~" only as ~0 or ~1
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
_BAD_ESCAPE = re.compile(r"~(?![01])")


def compile_masking(
    fields: tuple[str, ...] | None, masking: Mapping[str, Masking], pseudonym_key: bytes
) -> RecordMasker:
    """Compile an agreement's projection (None = every field) and masking rules.
    ``pseudonym_key`` keys the HMAC of the pseudonym rule (``pseudonym_key``: one per
    consumer, provider and resource)."""
    if fields is None and not masking:
        return RecordMasker(None)
    return RecordMasker(_compile(_build(fields, masking, pseudonym_key)))


def pseudonym_key(secret: bytes, consumer_org: str, provider_org: str, resource: str) -> bytes:
    """The key of the pseudonym rule for one consumer, provider and resource:
    HMAC-SHA256(secret, RFC 8785 form of ["qiao-pseudonym/1", consumer, provider, resource])
    (RFC 2104). Not the agreement's id: a renewal is a new agreement, and pseudonyms that
    changed with it would break the consumer's joins across the renewal; two agreements of the
    same parties on the same resource give the same pseudonyms, which tells the consumer
    nothing that either of them does not. Different consumers never share a key, so they
    cannot link their records through pseudonyms."""
    message = canonical_json(["qiao-pseudonym/1", consumer_org, provider_org, resource])
    return hmac.new(secret, message, hashlib.sha256).digest()
