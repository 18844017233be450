"""Properties of the protocol maths, held for every input Hypothesis generates (issue 9).

The unit tests beside each module (tests/ledger/test_merkle.py, tests/agreements/
test_masking.py, tests/catalog/test_validators.py ...) already check flipped bits in Merkle
proofs, single substitutions in check-character codes and what each masking rule keeps.
These add what those leave open:

- Merkle (RFC 9162 §2.1.3-2.1.4): a proof verifies exactly the claim it was made for; the
  same hashes offered for another leaf index or tree size, or cut short or lengthened, fail.
- Signed notes (c2sp.org/signed-note): any text round-trips; any altered byte of the note,
  signature included, is refused; a cosignature does not verify another timestamp.
- Masking (GB/T 37964-2019, GB/T 35273-2020 §3.14): the masked record never contains the
  sensitive value, is the same for the same key and differs across keys (pseudonyms), and
  keeps the record's shape.
- Validators (GB 32100, GB 11643): no single-character change (any character substituted,
  inserted, deleted, or two neighbours swapped) gives another code that passes.
- Policy (docs/agreements.md): whatever the call, an agreement narrowed in any of its terms
  never admits a call the wider one refuses.

Each test records how many cases it ran (section "fuzz"). The short profile runs a few dozen
examples each, derandomized so that CI is repeatable; the full one, hundreds.
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qiao.agreements.document import Agreement, Masking, MaskRule
from qiao.agreements.masking import PSEUDONYM_PREFIX, compile_masking
from qiao.agreements.policy import compile_policy
from qiao.catalog.validators import (
    USCC_ALPHABET,
    citizen_id_check_char,
    uscc_check_char,
    validate_citizen_id,
    validate_uscc,
)
from qiao.ledger import note
from qiao.ledger.errors import NoteError, ProofError
from qiao.ledger.merkle import (
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from qiao.problems import Problem
from reliability.figures import PROFILE, record
from tests.agreements.test_policy import (
    APP,
    CONSUMER,
    FIELDS,
    NOW,
    PROVIDER,
    RESOURCE,
    conf_doc,
    published,
)

EXAMPLES = PROFILE.pick(40, 600)
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=not PROFILE.full,  # CI repeats the same cases; the full run explores
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Counter:
    """Cases one property ran, recorded as a figure when the test ends; ``hits`` counts the
    cases where the interesting side of an implication held (so a property that never got
    there shows as such)."""

    def __init__(self) -> None:
        self.cases = 0
        self.hits: int | None = None

    def __call__(self) -> None:
        self.cases += 1

    def hit(self) -> None:
        self.hits = (self.hits or 0) + 1


@pytest.fixture
def cases(request: pytest.FixtureRequest) -> Iterator[Counter]:
    counter = Counter()
    yield counter
    name = request.node.name.removeprefix("test_").replace("_", " ")
    note = f"{counter.hits} of them on the implication's far side" if counter.hits else ""
    record("fuzz", f"property: {name}", counter.cases, "cases", target="0 failures", ok=True,
           note=note)  # fmt: skip


# --- Merkle proofs (RFC 9162 §2.1.3, §2.1.4) --------------------------------------------------

TREE_SIZE = 300  # past 256, so proofs cross a full tile's subtree and the tree's border
TREE = MemoryTree(leaf_hash(f"entry {i}".encode()) for i in range(TREE_SIZE))
ROOTS = [TREE.root(n) for n in range(TREE_SIZE + 1)]
claims = st.integers(min_value=1, max_value=TREE_SIZE).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n - 1), st.just(n))
)


def _verifies(check: Callable[[], None]) -> bool:
    try:
        check()
    except ProofError:
        return False
    return True


@PROPERTY
@given(claim=claims, other=claims)
def test_an_inclusion_proof_verifies_only_its_own_index_and_size(
    claim: tuple[int, int], other: tuple[int, int], cases: Counter
) -> None:
    cases()
    index, size = claim
    proof = inclusion_proof(index, size, TREE.get_hash)
    verify_inclusion(index, size, TREE.get_hash(0, index), proof, ROOTS[size])
    # Offered as the proof of another leaf (its true hash), in a tree of another size (its
    # true root), the same hashes verify only if they are that claim's proof too.
    i, n = other
    ok = _verifies(lambda: verify_inclusion(i, n, TREE.get_hash(0, i), proof, ROOTS[n]))
    assert ok == (proof == inclusion_proof(i, n, TREE.get_hash)), (claim, other)
    # Nor is the leaf it proves in the tree at another index.
    if i != index and i < size:
        leaf = TREE.get_hash(0, index)
        assert not _verifies(lambda: verify_inclusion(i, size, leaf, proof, ROOTS[size]))


@PROPERTY
@given(claim=claims, cut=st.booleans(), extra=st.binary(min_size=32, max_size=32))
def test_an_inclusion_proof_cut_short_or_lengthened_fails(
    claim: tuple[int, int], cut: bool, extra: bytes, cases: Counter
) -> None:
    cases()
    index, size = claim
    proof = inclusion_proof(index, size, TREE.get_hash)
    if cut:
        assume(proof)
        changed = proof[:-1]
    else:
        changed = [*proof, extra]
    with pytest.raises(ProofError):
        verify_inclusion(index, size, TREE.get_hash(0, index), changed, ROOTS[size])


sizes = st.integers(min_value=1, max_value=TREE_SIZE)
ranges = st.tuples(sizes, sizes).map(sorted).map(tuple)


@PROPERTY
@given(claim=ranges, other=ranges, cut=st.booleans())
def test_a_consistency_proof_verifies_only_its_own_sizes(
    claim: tuple[int, int], other: tuple[int, int], cut: bool, cases: Counter
) -> None:
    cases()
    old, new = claim
    proof = consistency_proof(old, new, TREE.get_hash)
    verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])
    m, n = other
    ok = _verifies(lambda: verify_consistency(m, n, proof, ROOTS[m], ROOTS[n]))
    assert ok == (proof == consistency_proof(m, n, TREE.get_hash)), (claim, other)
    # A witness never takes a proof with a hash left off or one more.
    changed = proof[:-1] if cut else [*proof, ROOTS[0]]
    if proof or not cut:
        assert not _verifies(lambda: verify_consistency(old, new, changed, ROOTS[old], ROOTS[new]))


# --- signed notes (c2sp.org/signed-note, tlog-cosignature) -----------------------------------

LOG = note.Signer.generate("log.example/qiao")
OTHER_LOG = note.Signer.generate("log.example/qiao")  # the same name, another key
WITNESS = note.Cosigner.generate("witness.example/a")
# Note text: any characters but the ASCII controls other than newline (the spec's rule).
note_lines = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=[chr(i) for i in range(32)]),
    max_size=40,
)
note_texts = st.lists(note_lines, min_size=1, max_size=6).map(lambda ls: "\n".join(ls) + "\n")


@PROPERTY
@given(text=note_texts)
def test_any_note_text_round_trips(text: str, cases: Counter) -> None:
    cases()
    signed = note.sign_note(text, [LOG])
    opened, sigs = note.open_note(signed, [LOG.verifier()])
    assert opened == text and [s.name for s in sigs] == [LOG.name]
    # The same name under another key is another key: the note is not taken as its.
    with pytest.raises(NoteError):
        note.open_note(signed, [OTHER_LOG.verifier()])


@PROPERTY
@given(text=note_texts, data=st.data())
def test_any_altered_byte_of_a_signed_note_is_refused(
    text: str, data: st.DataObject, cases: Counter
) -> None:
    cases()
    signed = note.sign_note(text, [LOG])
    at = data.draw(st.integers(min_value=0, max_value=len(signed) - 1), label="at")
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != signed[at]))
    changed = signed[:at] + bytes([byte]) + signed[at + 1 :]
    with pytest.raises(NoteError):
        note.open_note(changed, [LOG.verifier()])


@PROPERTY
@given(
    size=st.integers(min_value=0, max_value=note.MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    timestamp=st.integers(min_value=0, max_value=2**40),
    shift=st.integers(min_value=1, max_value=2**20),
)
def test_a_cosignature_verifies_its_own_checkpoint_and_time_only(
    size: int, root: bytes, timestamp: int, shift: int, cases: Counter
) -> None:
    cases()
    body = note.Checkpoint("log.example/qiao", size, root).format().encode()
    line = note.cosign(body, timestamp, WITNESS)
    signed = note.sign_note(body.decode(), [LOG]) + line.encode()
    _, sigs = note.open_note(signed, [LOG.verifier(), WITNESS.verifier()])
    assert {s.name for s in sigs} == {LOG.name, WITNESS.name}
    cosig = next(s for s in sigs if s.name == WITNESS.name)
    assert note.cosignature_timestamp(cosig) == timestamp
    # The same signature under another timestamp (the 8 bytes it signs) does not verify.
    raw = base64.b64decode(line.rsplit(" ", 1)[1])
    moved = raw[:4] + (timestamp + shift).to_bytes(8, "big") + raw[12:]
    forged = line.rsplit(" ", 1)[0] + " " + base64.b64encode(moved).decode() + "\n"
    with pytest.raises(NoteError):
        note.open_note(note.sign_note(body.decode(), [LOG]) + forged.encode(), [WITNESS.verifier()])


# --- masking (GB/T 37964-2019; GB/T 35273-2020 §3.14) ----------------------------------------

digits = string.digits


@st.composite
def citizen_ids(draw: st.DrawFn) -> str:
    first17 = draw(st.sampled_from(["110105", "440305", "350102"])) + draw(
        st.text(digits, min_size=11, max_size=11)
    )
    return first17 + citizen_id_check_char(first17)


SURNAMES = "王李张刘陈杨黄赵吴周"
SENSITIVE: dict[MaskRule, st.SearchStrategy[str]] = {
    MaskRule.CITIZEN_ID: citizen_ids(),
    MaskRule.MOBILE: st.builds(
        lambda a, b: "1" + a + b,
        st.sampled_from("3456789"),
        st.text(digits, min_size=9, max_size=9),
    ),
    MaskRule.NAME: st.builds(
        lambda s, g: s + g,
        st.sampled_from(SURNAMES),
        st.text("伟芳娜敏静强磊军", min_size=1, max_size=3),
    ),
    MaskRule.PLATE: st.builds(
        lambda p, a, s: p + a + s,
        st.sampled_from("京津沪渝粤闽浙苏"),
        st.sampled_from("ABCDEFGH"),
        st.text("ABCDEFGHJK0123456789", min_size=5, max_size=6),
    ),
    MaskRule.BANK_CARD: st.text(digits, min_size=16, max_size=19),
    MaskRule.EMAIL: st.builds(
        lambda u, d: f"{u}@{d}.cn",
        st.text(string.ascii_lowercase + digits + ".", min_size=2, max_size=12),
        st.sampled_from(["example", "gov", "bank"]),
    ),
    MaskRule.PSEUDONYM: citizen_ids(),
}
masked_fields = st.dictionaries(
    st.sampled_from(["a", "b", "c", "owner"]), st.sampled_from(sorted(SENSITIVE)), min_size=1
).flatmap(
    lambda rules: st.tuples(
        st.just(rules), st.fixed_dictionaries({f: SENSITIVE[r] for f, r in rules.items()})
    )
)
# Fields left alone: values that cannot contain a sensitive one (no CJK, no digit runs).
others = st.dictionaries(
    st.sampled_from(["status", "count", "flag"]),
    st.one_of(st.booleans(), st.none(), st.sampled_from(["open", "closed"]), st.integers(0, 9)),
)
keys = st.binary(min_size=32, max_size=32)


@PROPERTY
@given(fields=masked_fields, other=others, key=keys, as_list=st.booleans())
def test_masked_records_never_contain_the_sensitive_value(
    fields: tuple[dict[str, MaskRule], dict[str, str]],
    other: dict[str, Any],
    key: bytes,
    as_list: bool,
    cases: Counter,
) -> None:
    cases()
    rules, values = fields
    masking = {f: Masking(rule=r) for f, r in rules.items()}
    masker = compile_masking(None, masking, key)
    plain = {**other, **values}
    # The same rules reach inside an array of records ("items[].a").
    if as_list:
        masker = compile_masking(None, {f"items[].{f}": m for f, m in masking.items()}, key)
        plain = {"items": [plain, dict(plain)]}
    out = masker.apply(plain)
    text = json.dumps(out, ensure_ascii=False)
    for value in values.values():
        assert value not in text, (value, text)
    # The input is not modified: masking works on a copy.
    assert (plain["items"][0] if as_list else plain) == {**other, **values}


@PROPERTY
@given(fields=masked_fields, other=others, key=keys, key2=keys)
def test_masking_is_deterministic_per_key_and_keeps_the_shape(
    fields: tuple[dict[str, MaskRule], dict[str, str]],
    other: dict[str, Any],
    key: bytes,
    key2: bytes,
    cases: Counter,
) -> None:
    cases()
    rules, values = fields
    masking = {f: Masking(rule=r) for f, r in rules.items()}
    plain = {**other, **values}
    out = compile_masking(None, masking, key).apply(plain)
    assert out == compile_masking(None, masking, key).apply(dict(plain))
    # The shape: the same keys; the fields no rule names unchanged; a masked one a string.
    assert set(out) == set(plain)
    assert all(out[f] == v for f, v in other.items())
    assert all(isinstance(out[f], str) for f in rules)
    # Pseudonyms join within one key and do not link across keys (RFC 2104 keyed hash).
    pseudonymized = [f for f, r in rules.items() if r is MaskRule.PSEUDONYM]
    if pseudonymized and key != key2:
        again = compile_masking(None, masking, key2).apply(plain)
        for f in pseudonymized:
            assert out[f].startswith(PSEUDONYM_PREFIX)
            assert out[f] != again[f]


# --- validators (GB 32100, GB 11643) ----------------------------------------------------------

TODAY = NOW.date()
usccs = st.text(USCC_ALPHABET, min_size=17, max_size=17).map(lambda s: s + uscc_check_char(s))


@st.composite
def valid_citizen_ids(draw: st.DrawFn) -> str:
    region = draw(st.sampled_from(["110105", "440305", "350102", "650102"]))
    born = draw(st.dates(min_value=TODAY.replace(year=1900), max_value=TODAY))
    first17 = f"{region}{born:%Y%m%d}" + draw(st.text(digits, min_size=3, max_size=3))
    return first17 + citizen_id_check_char(first17)


any_char = st.characters(blacklist_categories=("Cs",))


@st.composite
def single_changes(draw: st.DrawFn, code: str) -> str:
    """``code`` with one character substituted (by any character), inserted or deleted, or
    two neighbours swapped: the slips a person makes copying a code."""
    at = draw(st.integers(min_value=0, max_value=len(code) - 1))
    kind = draw(st.sampled_from(["substitute", "insert", "delete", "swap"]))
    if kind == "substitute":
        ch = draw(any_char.filter(lambda c: c != code[at]))
        return code[:at] + ch + code[at + 1 :]
    if kind == "insert":
        return code[:at] + draw(any_char) + code[at:]
    if kind == "delete":
        return code[:at] + code[at + 1 :]
    at = min(at, len(code) - 2)
    assume(code[at] != code[at + 1])
    return code[:at] + code[at + 1] + code[at] + code[at + 2 :]


def _normalized(check: Callable[[str], str], value: str) -> str | None:
    try:
        return check(value)
    except ValueError:
        return None


@PROPERTY
@given(data=st.data(), code=usccs)
def test_no_single_slip_in_a_uscc_gives_another_valid_code(
    data: st.DataObject, code: str, cases: Counter
) -> None:
    cases()
    assert validate_uscc(code) == code
    changed = data.draw(single_changes(code), label="changed")
    # Refused, or read as the same code (a lower-case letter, a space at either end).
    assert _normalized(validate_uscc, changed) in (None, code), changed


@PROPERTY
@given(data=st.data(), value=valid_citizen_ids())
def test_no_single_slip_in_a_citizen_id_gives_another_valid_number(
    data: st.DataObject, value: str, cases: Counter
) -> None:
    cases()
    assert validate_citizen_id(value, today=TODAY) == value
    changed = data.draw(single_changes(value), label="changed")
    check = lambda v: validate_citizen_id(v, today=TODAY)  # noqa: E731
    assert _normalized(check, changed) in (None, value), changed


# --- policy: narrowing an agreement never allows more (docs/agreements.md) ------------------

METHODS = ["GET", "POST", "PUT", "DELETE"]
PATHS = ["records/*", "records/**", "stats"]
PURPOSES = ["traffic-enforcement", "audit", "licensing"]


def _subset(items: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(items), min_size=1, unique=True).map(
        lambda xs: sorted(xs, key=items.index)
    )


@st.composite
def narrowed_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A wide agreement's terms and the same agreement narrowed in some of them."""
    methods = draw(_subset(METHODS))
    paths = draw(st.just(["**"]) | _subset(PATHS))
    purposes = draw(_subset(PURPOSES))
    fields = ["plate", *draw(st.lists(st.sampled_from(FIELDS[1:]), unique=True))]
    wide = {
        "consumer": {"org": CONSUMER, "name": "执法局", "apps": []},
        "operations": {"methods": methods, "paths": paths},
        "fields": fields,
        "purposes": purposes,
        "masking": {"plate": {"rule": "plate"}},
        "valid_from": (NOW - timedelta(days=30)).isoformat(),
        "valid_until": (NOW + timedelta(days=30)).isoformat(),
    }
    narrow = json.loads(json.dumps(wide))
    narrow["operations"]["methods"] = draw(_subset(methods))
    narrow["operations"]["paths"] = draw(_subset(PATHS if paths == ["**"] else paths))
    narrow["purposes"] = draw(_subset(purposes))
    narrow["fields"] = ["plate", *draw(_subset(fields[1:]) | st.just([]))] if fields[1:] else fields
    apps = draw(st.sampled_from([[], [], [], ["inspector"], ["inspector"], ["another"]]))
    if apps:
        narrow["consumer"]["apps"] = apps
    if draw(st.booleans()):
        narrow["conditions"] = {"end_user_required": True}
    # A shorter validity: starting up to two days from now, ending up to three (after it
    # starts); the wide one runs a month either side.
    start = draw(st.none() | st.integers(-48, 48))
    if start is not None:
        narrow["valid_from"] = (NOW + timedelta(hours=start)).isoformat()
    if draw(st.booleans()):
        end = draw(st.integers(max(start or 0, 0) + 1, 72))
        narrow["valid_until"] = (NOW + timedelta(hours=end)).isoformat()
    return wide, narrow


def calls(terms: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Calls of every kind, most of them near what ``terms`` allow (else almost every call
    would be refused by both, and the property would hold without saying anything)."""
    allowed = terms["operations"]
    inside = {"**": "records/7", "records/*": "records/7", "records/**": "records/7/owner",
              "stats": "stats"}  # fmt: skip
    hours = [
        (datetime.fromisoformat(terms[k]) - NOW) // timedelta(hours=1)
        for k in ("valid_from", "valid_until")
    ]
    return st.fixed_dictionaries(
        {
            "method": st.sampled_from(allowed["methods"]) | st.sampled_from([*METHODS, "PATCH"]),
            "path": st.sampled_from([inside[p] for p in allowed["paths"]])
            | st.sampled_from(["", "records", "records/7", "records/7/owner", "stats", "x/y"]),
            "query": st.just({})
            | st.sampled_from(
                [{"fields": "plate"}, {"fields": "plate,code"}, {"owner.name": "张三"}, {"at": "1"}]
            ),
            "purpose": st.sampled_from(terms["purposes"])
            | st.sampled_from(["", *PURPOSES, "marketing"]),
            "end_user": st.sampled_from(["user-1", ""]),
            # Hours from NOW: inside the narrowed validity, or anywhere around the wide one.
            "at": st.integers(hours[0], hours[1] - 1) | st.integers(-24 * 40, 24 * 40),
        }
    )


def _policy_of(terms: dict[str, Any]) -> Any:
    doc: dict[str, Any] = {
        "id": "agr-0001",
        "instance": "test",
        "provider": {"org": PROVIDER, "name": "公安局"},
        "resource": {"code": RESOURCE, "version": 3, "sharing_type": "conditional"},
        "issued_at": (NOW - timedelta(days=30)).isoformat(),
        **terms,
    }
    return compile_policy(
        conf_doc([published(Agreement.model_validate(doc))]), {(PROVIDER, RESOURCE): list(FIELDS)}
    )


def _admits(pol: Any, call: dict[str, Any]) -> bool:
    try:
        pol.decide(
            APP, PROVIDER, RESOURCE, call["method"], call["path"], call["query"],
            call["purpose"], call["end_user"], NOW + timedelta(hours=call["at"]), "consumer",
        )  # fmt: skip
    except Problem:
        return False
    return True


@settings(PROPERTY, max_examples=PROFILE.pick(30, 400))
@given(pair=narrowed_pairs(), data=st.data())
def test_a_narrowed_agreement_never_admits_what_the_wider_refuses(
    pair: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject, cases: Counter
) -> None:
    wide, narrow = pair
    batch = data.draw(st.lists(calls(narrow), min_size=1, max_size=8), label="calls")
    wider, narrower = _policy_of(wide), _policy_of(narrow)
    for call in batch:
        cases()
        if _admits(narrower, call):
            cases.hit()
            assert _admits(wider, call), (wide, narrow, call)
