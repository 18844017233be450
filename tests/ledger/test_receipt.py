"""C2SP tlog-proof receipts: format, parse, and offline verification under a tlog-policy."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao.ledger import merkle, note
from qiao.ledger.errors import LedgerError, ReceiptError
from qiao.ledger.policy import Policy, policy_text
from qiao.ledger.receipt import HEADER, Receipt, format_receipt, parse_receipt, verify_receipt

ORIGIN = "hub.qiao.example/ledger"
NOW = 1_700_000_000
MAX_SIZE = 300

LOG = note.Signer.generate(ORIGIN)
WITNESSES = [note.Cosigner.generate(name) for name in ("a", "b", "c")]
ENTRIES = [b'{"type":"exchange","n":%d}' % i for i in range(MAX_SIZE)]
TREE = merkle.MemoryTree(merkle.leaf_hash(e) for e in ENTRIES)

LOG_KEY = LOG.verifier().to_text()
WITNESS_KEYS = [w.verifier().to_text() for w in WITNESSES]
TWO_OF_THREE = Policy.parse(policy_text(LOG_KEY, WITNESS_KEYS, 2))
THREE_OF_THREE = Policy.parse(policy_text(LOG_KEY, WITNESS_KEYS, 3))


def cosigned(size: int, cosigners: list[note.Cosigner] = WITNESSES) -> bytes:
    body = note.Checkpoint(ORIGIN, size, TREE.root(size)).format()
    lines = "".join(w.cosign(body.encode(), NOW) for w in cosigners)
    return note.sign_note(body, [LOG]) + lines.encode()


def receipt(
    index: int, size: int, cosigners: list[note.Cosigner] = WITNESSES, extra: bytes | None = None
) -> bytes:
    proof = merkle.inclusion_proof(index, size, TREE.get_hash)
    return format_receipt(index, proof, cosigned(size, cosigners), extra)


# --- format and parse ------------------------------------------------------------------------


def test_format_matches_the_spec_layout() -> None:
    data = receipt(42, 100)
    lines = data.decode().split("\n")
    assert lines[0] == HEADER
    assert lines[1] == "index 42"
    proof = merkle.inclusion_proof(42, 100, TREE.get_hash)
    assert lines[2 : 2 + len(proof)] == [base64.b64encode(h).decode() for h in proof]
    assert lines[2 + len(proof)] == ""
    assert data.endswith(cosigned(100))
    assert data.split(b"\n\n", 1)[1] == cosigned(100)  # the checkpoint, verbatim


def test_parse_round_trips_with_and_without_extra() -> None:
    for extra in (None, b"", b"\x00opaque application data"):
        data = receipt(7, 20, extra=extra)
        parsed = parse_receipt(data)
        assert parsed == Receipt(
            7, tuple(merkle.inclusion_proof(7, 20, TREE.get_hash)), cosigned(20), extra
        )
        assert parsed.format() == data
    assert receipt(3, 9, extra=b"xy").decode().split("\n")[1] == "extra eHk="


def test_a_single_entry_log_has_an_empty_proof() -> None:
    data = receipt(0, 1)
    assert data.startswith(f"{HEADER}\nindex 0\n\n".encode())
    assert verify_receipt(data, ENTRIES[0], TWO_OF_THREE).startswith("entry 0 is in log")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d.replace(b"@v1", b"@v2", 1), "does not start with the line"),
        (lambda d: d.replace(b"index 42", b"index 042"), "not a uint64 in decimal"),
        (lambda d: d.replace(b"index 42", b"index -1"), "not a uint64 in decimal"),
        (lambda d: d.replace(b"index 42", b"idx 42"), "line 2 is not 'index <N>'"),
        (lambda d: d.replace(b"index 42\n", b""), "line 2 is not 'index <N>'"),
        (lambda d: d.replace(b"\n\n", b"\n"), "no empty line"),
        (lambda d: d.split(b"\n\n")[0] + b"\n\n", "no checkpoint"),
        (lambda d: d.replace(b"index 42\n", b"index 42\n!!notbase64\n"), "is not base64"),
        (lambda d: d.replace(b"index 42\n", b"index 42\nAAAA\n"), "is 3 bytes, not 32"),
        (lambda d: d.replace(b"index 42\n", b"index 42\n" + b"A" * 42 + b"B=\n"), "canonical"),
        (
            lambda d: d.replace(b"index 42\n", b"index 42\n" + (b"A" * 43 + b"=\n") * 60),
            "more than 64",
        ),
        (lambda d: d.replace(b"index 42", "index ４２".encode()), "not ASCII"),
        (lambda d: d.replace(b"index 42", b"extra %%%\nindex 42"), "extra data is not base64"),
    ],
)
def test_malformed_receipts(mangle: object, message: str) -> None:
    data = mangle(receipt(42, 100))  # type: ignore[operator]
    with pytest.raises(ReceiptError) as err:
        parse_receipt(data)
    assert message in str(err.value)
    with pytest.raises(ReceiptError):
        verify_receipt(data, ENTRIES[42], TWO_OF_THREE)


def test_format_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="not 32"):
        format_receipt(0, [b"short"], cosigned(1))
    with pytest.raises(ValueError, match="uint64"):
        format_receipt(-1, [], cosigned(1))


# --- verification ------------------------------------------------------------------------


def test_verifies_under_two_of_three() -> None:
    statement = verify_receipt(receipt(42, 100), ENTRIES[42], TWO_OF_THREE)
    assert statement == (
        f"entry 42 is in log {ORIGIN} at size 100, cosigned by 3 of 3 witnesses: a, b, c"
    )


def test_two_cosignatures_are_enough_for_two_of_three() -> None:
    data = receipt(42, 100, [WITNESSES[0], WITNESSES[2]])
    statement = verify_receipt(data, ENTRIES[42], TWO_OF_THREE)
    assert statement.endswith("cosigned by 2 of 3 witnesses: a, c")


def test_one_missing_fails_three_of_three() -> None:
    data = receipt(42, 100, WITNESSES[:2])
    with pytest.raises(ReceiptError) as err:
        verify_receipt(data, ENTRIES[42], THREE_OF_THREE)
    assert str(err.value) == (
        f"the checkpoint of log {ORIGIN} at size 100 is cosigned by 2 of 3 witnesses: a, b; "
        "the policy needs 3 of a, b, c"
    )


def test_wrong_entry_fails() -> None:
    with pytest.raises(ReceiptError, match="the entry given is not entry 42"):
        verify_receipt(receipt(42, 100), ENTRIES[43], TWO_OF_THREE)
    with pytest.raises(ReceiptError, match="not entry 42"):
        verify_receipt(receipt(42, 100), ENTRIES[42] + b" ", TWO_OF_THREE)


def test_wrong_index_fails() -> None:
    data = receipt(42, 100)
    with pytest.raises(ReceiptError, match="not entry 43"):
        verify_receipt(data.replace(b"index 42", b"index 43"), ENTRIES[42], TWO_OF_THREE)
    with pytest.raises(ReceiptError, match="not entry 43"):
        verify_receipt(data.replace(b"index 42", b"index 43"), ENTRIES[43], TWO_OF_THREE)
    with pytest.raises(ReceiptError, match="entry 100 is not in a tree of size 100"):
        verify_receipt(data.replace(b"index 42", b"index 100"), ENTRIES[42], TWO_OF_THREE)


def test_tampered_hash_fails() -> None:
    proof = merkle.inclusion_proof(42, 100, TREE.get_hash)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes(b ^ 1 for b in bad[i])
        data = format_receipt(42, bad, cosigned(100))
        with pytest.raises(ReceiptError, match="leads to root"):
            verify_receipt(data, ENTRIES[42], TWO_OF_THREE)
    with pytest.raises(ReceiptError, match="needs"):  # a hash left out
        verify_receipt(format_receipt(42, proof[:-1], cosigned(100)), ENTRIES[42], TWO_OF_THREE)


def test_tampered_checkpoint_fails() -> None:
    data = receipt(42, 100)
    root = base64.b64encode(TREE.root(100))
    other = base64.b64encode(TREE.root(99))
    with pytest.raises(ReceiptError, match="checkpoint does not verify"):
        verify_receipt(data.replace(root, other), ENTRIES[42], TWO_OF_THREE)
    with pytest.raises(ReceiptError, match="checkpoint does not verify"):
        verify_receipt(data.replace(b"\n100\n", b"\n101\n"), ENTRIES[42], TWO_OF_THREE)


def test_checkpoint_without_log_signature_fails() -> None:
    body = note.Checkpoint(ORIGIN, 100, TREE.root(100)).format()
    lines = "".join(w.cosign(body.encode(), NOW) for w in WITNESSES)
    proof = merkle.inclusion_proof(42, 100, TREE.get_hash)
    data = format_receipt(42, proof, (body + "\n" + lines).encode())
    with pytest.raises(ReceiptError, match="not signed by log"):
        verify_receipt(data, ENTRIES[42], TWO_OF_THREE)


def test_another_logs_receipt_fails() -> None:
    other = Policy.parse(
        policy_text(note.Signer.generate("other/log").verifier().to_text(), WITNESS_KEYS, 2)
    )
    with pytest.raises(ReceiptError, match="not a log of the policy"):
        verify_receipt(receipt(42, 100), ENTRIES[42], other)


def test_without_the_entry_says_inclusion_was_not_checked() -> None:
    statement = verify_receipt(receipt(42, 100), None, TWO_OF_THREE)
    assert "NOT checked" in statement
    assert "cosigned by 3 of 3 witnesses" in statement


def test_errors_are_ledger_errors() -> None:
    assert issubclass(ReceiptError, LedgerError)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_index_in_any_size_verifies(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=MAX_SIZE), label="size")
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    cosigners = data.draw(st.sets(st.sampled_from(WITNESSES), min_size=2), label="cosigners")
    signed = receipt(index, size, sorted(cosigners, key=lambda w: w.name))
    statement = verify_receipt(signed, ENTRIES[index], TWO_OF_THREE)
    assert statement.startswith(f"entry {index} is in log {ORIGIN} at size {size}, ")
    assert parse_receipt(signed).index == index
    # ... and never for another entry of the log.
    other = (index + 1) % MAX_SIZE
    with pytest.raises(ReceiptError):
        verify_receipt(signed, ENTRIES[other], TWO_OF_THREE)
