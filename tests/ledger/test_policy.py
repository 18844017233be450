"""C2SP tlog-policy: parsing every rule of the format, and quorum evaluation on checkpoints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao.ledger import merkle, note
from qiao.ledger.errors import NoteError, PolicyError
from qiao.ledger.policy import NONE, Policy, policy_text

ORIGIN = "hub.qiao.example/ledger"
NOW = 1_700_000_000

LOG = note.Signer.generate(ORIGIN)
WITNESSES = [note.Cosigner.generate(f"w{i}.qiao.example") for i in range(6)]
LOG_KEY = LOG.verifier().to_text()
W = [w.verifier().to_text() for w in WITNESSES]


def _checkpoint(cosigners: list[note.Cosigner], size: int = 5) -> bytes:
    body = note.Checkpoint(ORIGIN, size, merkle.EMPTY_ROOT if size == 0 else bytes(32)).format()
    signed = note.sign_note(body, [LOG])
    return (
        signed + "".join(c.cosign(body.encode(), NOW + i) for i, c in enumerate(cosigners)).encode()
    )


def _spec_example() -> str:
    # The example of c2sp.org/tlog-policy "Example policy", with real keys.
    return f"""log {LOG_KEY}

witness X1 {W[0]}
witness X2 {W[1]}
witness X3 {W[2]}
group X-witnesses 2 X1 X2 X3

witness Y1 {W[3]}
witness Y2 {W[4]}
witness Y3 {W[5]}
group Y-witnesses any Y1 Y2 Y3

group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
"""


# --- parsing ---------------------------------------------------------------------------------


def test_parses_the_spec_example() -> None:
    policy = Policy.parse(_spec_example())
    assert [log.verifier.name for log in policy.logs] == [ORIGIN]
    assert [w.name for w in policy.witnesses] == ["X1", "X2", "X3", "Y1", "Y2", "Y3"]
    assert [(g.name, g.threshold, g.members) for g in policy.groups] == [
        ("X-witnesses", 2, ("X1", "X2", "X3")),
        ("Y-witnesses", 1, ("Y1", "Y2", "Y3")),
        ("X-and-Y", 2, ("X-witnesses", "Y-witnesses")),
    ]
    assert policy.quorum == "X-and-Y"
    assert policy.describe_quorum() == "2 of (2 of X1, X2, X3), (1 of Y1, Y2, Y3)"


def test_two_level_quorum() -> None:
    policy = Policy.parse(_spec_example())
    assert policy.witnessed({"X1", "X3", "Y2"})
    assert not policy.witnessed({"X1", "X2", "X3"})  # no Y
    assert not policy.witnessed({"X1", "Y1", "Y2", "Y3"})  # one X only
    assert not policy.witnessed(set())


def test_whitespace_comments_urls_and_bytes() -> None:
    text = (
        f"# a comment\n  \t\n\t log\t{LOG_KEY}   https://hub.example/ledger  \n"
        f"   # indented comment\nwitness a {W[0]} https://a.example/witness\n"
        "quorum a"  # no final newline
    )
    policy = Policy.parse(text.encode())
    assert policy.logs[0].url == "https://hub.example/ledger"
    assert policy.witnesses[0].url == "https://a.example/witness"
    assert policy.quorum == "a"


def test_quorum_none() -> None:
    policy = Policy.parse(f"log {LOG_KEY}\nquorum none\n")
    assert policy.quorum == NONE
    assert policy.witnessed(set())
    assert policy.describe_quorum() == "no cosignatures"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no quorum line"),
        (f"log {LOG_KEY}\n", "no quorum line"),
        ("quorum none\nquorum none\n", "line 2: a policy has exactly one quorum line"),
        ("quorum a\n", "line 1: quorum 'a' is not a witness or group defined above"),
        ("quorum\n", "line 1: a quorum line is"),
        ("logs x\nquorum none\n", "line 1: unknown keyword 'logs'"),
        ("log\nquorum none\n", "line 1: a log line is"),
        (f"log {LOG_KEY} url extra\nquorum none\n", "line 1: a log line is"),
        ("log nonsense\nquorum none\n", "line 1: log key is not an Ed25519"),
        (f"log {W[0]}\nquorum none\n", "line 1: log key is not an Ed25519"),
        (f"witness a {LOG_KEY}\nquorum a\n", "line 1: witness key is not a cosignature/v1"),
        ("witness a\nquorum a\n", "line 1: a witness line is"),
        (f"witness none {W[0]}\nquorum none\n", "line 1: 'none' is predefined"),
        (f"witness a {W[0]}\nwitness a {W[1]}\nquorum a\n", "line 2: name 'a' is already"),
        (f"witness a {W[0]}\nwitness b {W[0]}\nquorum a\n", "line 2: witness 'b' repeats"),
        (f"log {LOG_KEY}\nlog {LOG_KEY}\nquorum none\n", "line 2: log key"),
        (f"witness a {W[0]}\ngroup g 1\nquorum g\n", "line 2: a group line is"),
        (f"witness a {W[0]}\ngroup g 1 b\nquorum g\n", "line 2: group member 'b' is not"),
        (f"group g 1 h\nwitness h {W[0]}\nquorum g\n", "line 1: group member 'h' is not"),
        (f"witness a {W[0]}\ngroup g 1 a a\nquorum g\n", "line 2: 'a' is already a member"),
        (
            f"witness a {W[0]}\nwitness b {W[1]}\ngroup g 1 a\ngroup h 1 a b\nquorum h\n",
            "line 4: 'a' is already a member",
        ),
        (f"witness a {W[0]}\ngroup g 1 none\nquorum g\n", "line 2: 'none' cannot be a group"),
        (f"witness a {W[0]}\ngroup g 0 a\nquorum g\n", "line 2: group threshold '0'"),
        (f"witness a {W[0]}\ngroup g 2 a\nquorum g\n", "line 2: group threshold '2'"),
        (f"witness a {W[0]}\ngroup g some a\nquorum g\n", "line 2: group threshold 'some'"),
        (f"witness a {W[0]}\ngroup a 1 a\nquorum a\n", "line 2: name 'a' is already"),
        (f"log {LOG_KEY}\r\nquorum none\n", "line 1: control character U+000D (save the file"),
        ("quorum none\n\x00\n", "line 2: control character U+0000"),
    ],
    # The texts hold keys generated at import: name the cases by message, so that every
    # process collecting them (pytest-xdist's workers) gets the same test ids.
    ids=lambda v: "policy" if "\n" in v or not v else v,
)
def test_malformed_policies(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        Policy.parse(text)
    assert message in str(err.value)


def test_duplicate_key_under_another_name_is_refused() -> None:
    # "Two vkeys are considered duplicate if they wrap the same underlying public key, even
    # if they differ by key name and key id."
    renamed = note.CosignatureVerifier("renamed", WITNESSES[0].verifier().public_key)
    with pytest.raises(PolicyError, match="repeats the public key"):
        Policy.parse(f"witness a {W[0]}\nwitness b {renamed.to_text()}\nquorum a\n")


def test_format_round_trips() -> None:
    policy = Policy.parse(_spec_example())
    assert Policy.parse(policy.format()).format() == policy.format()


# --- policy_text -------------------------------------------------------------------------


def test_policy_text_k_of_n() -> None:
    text = policy_text(LOG_KEY, W[:3], 2, log_url="https://hub.example/ledger")
    policy = Policy.parse(text)
    assert policy.logs[0].url == "https://hub.example/ledger"
    assert [w.name for w in policy.witnesses] == [f"w{i}.qiao.example" for i in range(3)]
    assert policy.describe_quorum() == "2 of w0.qiao.example, w1.qiao.example, w2.qiao.example"
    assert text.startswith("# C2SP tlog-policy")


def test_policy_text_no_quorum_and_errors() -> None:
    assert Policy.parse(policy_text(LOG_KEY, [], 0)).quorum == NONE
    assert Policy.parse(policy_text(LOG_KEY, W[:2], 0)).quorum == NONE
    with pytest.raises(ValueError, match="quorum 3 is not between 0 and 2"):
        policy_text(LOG_KEY, W[:2], 3)
    with pytest.raises(ValueError, match="witness URLs"):
        policy_text(LOG_KEY, W[:2], 1, witness_urls=["https://a"])
    with pytest.raises(NoteError):
        policy_text(LOG_KEY, [LOG_KEY], 1)  # a log key is not a cosignature key
    with pytest.raises(ValueError, match="do not make a valid policy"):
        policy_text(LOG_KEY, [W[0], W[0]], 1)


def test_policy_text_avoids_a_group_name_clash() -> None:
    clash = note.Cosigner.generate("witnesses").verifier().to_text()
    policy = Policy.parse(policy_text(LOG_KEY, [clash, W[1]], 1))
    assert policy.quorum == "witnesses-group"


# --- satisfied ---------------------------------------------------------------------------


def test_satisfied_two_of_three() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 2))
    met, check = policy.satisfied(_checkpoint([WITNESSES[0], WITNESSES[2]]))
    assert met and check.met
    assert check.log == ORIGIN
    assert check.checkpoint.size == 5
    assert check.cosigned_by == ("w0.qiao.example", "w2.qiao.example")
    assert [c.timestamp for c in check.cosignatures] == [NOW, NOW + 1]
    assert check.summary() == "cosigned by 2 of 3 witnesses: w0.qiao.example, w2.qiao.example"


def test_not_satisfied_says_what_the_policy_needs() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 3))
    met, check = policy.satisfied(_checkpoint(WITNESSES[:2]))
    assert not met
    assert check.summary() == (
        "cosigned by 2 of 3 witnesses: w0.qiao.example, w1.qiao.example; the policy needs "
        "3 of w0.qiao.example, w1.qiao.example, w2.qiao.example"
    )


def test_unknown_cosignatures_are_ignored_and_do_not_count() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 2))
    met, check = policy.satisfied(_checkpoint([WITNESSES[0], WITNESSES[4], WITNESSES[5]]))
    assert not met
    assert check.cosigned_by == ("w0.qiao.example",)


def test_a_repeated_cosignature_counts_once() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 2))
    met, check = policy.satisfied(_checkpoint([WITNESSES[0], WITNESSES[0]]))
    assert not met and check.cosigned_by == ("w0.qiao.example",)


def test_the_log_signature_is_required() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 1))
    body = note.Checkpoint(ORIGIN, 5, bytes(32)).format()
    lines = [w.cosign(body.encode(), NOW) for w in WITNESSES[:2]]
    only_cosigned = (body + "\n" + "".join(lines)).encode()
    with pytest.raises(NoteError, match="not signed by log"):
        policy.satisfied(only_cosigned)


def test_a_checkpoint_of_another_log_is_refused() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 1))
    other = note.Signer.generate("other.example/log")
    signed = note.sign_note(note.Checkpoint("other.example/log", 1, bytes(32)).format(), [other])
    with pytest.raises(PolicyError, match="not a log of the policy"):
        policy.satisfied(signed)


def test_a_bad_cosignature_by_a_listed_witness_fails_the_checkpoint() -> None:
    policy = Policy.parse(policy_text(LOG_KEY, W[:3], 1))
    other_body = note.Checkpoint(ORIGIN, 6, bytes(32)).format().encode()
    signed = _checkpoint([WITNESSES[0]]) + WITNESSES[1].cosign(other_body, NOW).encode()
    with pytest.raises(NoteError, match="does not verify"):
        policy.satisfied(signed)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_k_of_n_is_met_exactly_when_k_cosign(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n), label="k")
    signers = data.draw(st.sets(st.integers(min_value=0, max_value=5)), label="cosigners")
    policy = Policy.parse(policy_text(LOG_KEY, W[:n], k))
    met, check = policy.satisfied(_checkpoint([WITNESSES[i] for i in sorted(signers)]))
    in_policy = sum(1 for i in signers if i < n)
    assert met == (in_policy >= k)
    assert len(check.cosignatures) == in_policy
