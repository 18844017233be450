import base64

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from qiao import signing
from qiao.events.envelope import (
    BATCH_OVERHEAD,
    ENC_BYTES,
    MIN_ENVELOPE_BYTES,
    TAG_BYTES,
    EnvelopeError,
    batch_aad,
    event_aad,
    event_key_from_pem,
    event_key_from_text,
    event_key_to_pem,
    event_key_to_text,
    generate_event_key,
    open_envelope,
    seal,
    seal_batch,
)

KEY = generate_event_key()
OTHER_KEY = generate_event_key()
AAD = event_aad("traffic-accidents", "transport-node", "evt-0001")
EVENT = '{"accident_id":"A-17","district":"鼓楼","severity":2}'.encode()
SEALED = seal(KEY.public_key(), EVENT, aad=AAD)


def test_round_trip_and_format() -> None:
    assert open_envelope(KEY, SEALED, aad=AAD) == EVENT
    # version || enc || ciphertext with its tag: nothing else rides along.
    assert SEALED[0] == 0x01
    assert len(SEALED) == 1 + ENC_BYTES + len(EVENT) + TAG_BYTES
    assert EVENT not in SEALED
    # Each sealing uses a fresh ephemeral key: the same event never looks the same twice.
    again = seal(KEY.public_key(), EVENT, aad=AAD)
    assert again[1 : 1 + ENC_BYTES] != SEALED[1 : 1 + ENC_BYTES]
    assert open_envelope(KEY, again, aad=AAD) == EVENT


def test_an_empty_event_seals() -> None:
    sealed = seal(KEY.public_key(), b"", aad=AAD)
    assert len(sealed) == MIN_ENVELOPE_BYTES
    assert open_envelope(KEY, sealed, aad=AAD) == b""


def test_another_nodes_key_does_not_open_it() -> None:
    with pytest.raises(EnvelopeError, match="another node's event key") as e:
        open_envelope(OTHER_KEY, SEALED, aad=AAD)
    assert "鼓楼" not in str(e.value) and "A-17" not in str(e.value)


@given(position=st.integers(0, len(SEALED) - 1), flip=st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_any_altered_byte_is_detected(position: int, flip: int) -> None:
    tampered = bytearray(SEALED)
    tampered[position] ^= flip
    with pytest.raises(EnvelopeError):
        open_envelope(KEY, bytes(tampered), aad=AAD)


@pytest.mark.parametrize(
    "moved",
    [
        ("bike-station-status", "transport-node", "evt-0001"),  # another stream
        ("traffic-accidents", "district-node", "evt-0001"),  # another recipient
        ("traffic-accidents", "transport-node", "evt-0002"),  # another event id
    ],
)
def test_an_envelope_cannot_be_moved(moved: tuple[str, str, str]) -> None:
    with pytest.raises(EnvelopeError, match="bound to another stream, recipient or event id"):
        open_envelope(KEY, SEALED, aad=event_aad(*moved))


def test_the_binding_has_one_byte_form_per_triple() -> None:
    # A separator inside a name cannot make two different triples bind alike.
    assert event_aad("a", "b:c", "d") != event_aad("a:b", "c", "d")
    assert event_aad("s", "n", "1") == b'["qiao-event/1","s","n","1"]'
    for bad in (("", "n", "1"), ("s", "", "1"), ("s", "n", "")):
        with pytest.raises(EnvelopeError, match="must be a non-empty string"):
            event_aad(*bad)


@given(length=st.integers(0, len(SEALED) - 1))
@settings(max_examples=100, deadline=None)
def test_a_truncated_envelope_is_refused(length: int) -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(KEY, SEALED[:length], aad=AAD)


def test_truncation_errors_say_what_failed() -> None:
    with pytest.raises(EnvelopeError, match="empty"):
        open_envelope(KEY, b"", aad=AAD)
    with pytest.raises(EnvelopeError, match="truncated"):
        open_envelope(KEY, SEALED[: MIN_ENVELOPE_BYTES - 1], aad=AAD)
    with pytest.raises(EnvelopeError, match="does not open"):
        open_envelope(KEY, SEALED[:-1], aad=AAD)


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="version 3 is not supported"):
        open_envelope(KEY, b"\x03" + SEALED[1:], aad=AAD)


def test_event_keys_as_text() -> None:
    text = event_key_to_text(KEY.public_key())
    assert len(base64.b64decode(text)) == 32
    assert event_key_to_text(event_key_from_text(text)) == text
    sealed = seal(event_key_from_text(text), b"x", aad=AAD)
    assert open_envelope(KEY, sealed, aad=AAD) == b"x"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        base64.b64encode(bytes(31)).decode(),  # too short
        base64.b64encode(bytes(33)).decode(),  # too long
        base64.b64encode(bytes(32)).decode(),  # a low-order point (RFC 7748 §6.1)
        base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-canonical last character
        base64.b64encode(bytes(range(32))).decode().rstrip("="),  # padding missing
    ],
)
def test_bad_event_keys_are_refused(bad: str) -> None:
    with pytest.raises(EnvelopeError, match="not a base64 X25519 event key"):
        event_key_from_text(bad)


def test_sealing_to_a_low_order_key_fails() -> None:
    with pytest.raises(EnvelopeError, match="cannot seal"):
        seal(X25519PublicKey.from_public_bytes(bytes(32)), b"x", aad=AAD)


def test_event_keys_as_pem() -> None:
    pem = event_key_to_pem(KEY)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS #8
    loaded = event_key_from_pem(pem)
    assert open_envelope(loaded, SEALED, aad=AAD) == EVENT
    with pytest.raises(EnvelopeError, match="not a usable event key"):
        event_key_from_pem(b"nonsense")
    with pytest.raises(EnvelopeError, match="not an X25519 key"):
        event_key_from_pem(signing.signing_key_to_pem(signing.generate_signing_key()))


# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
A11_SKRM = "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8"
A11_PKRM = "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"
A11_SKEM = "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736"
A11_ENC = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"
A11_INFO = "4f6465206f6e2061204772656369616e2055726e"  # "Ode on a Grecian Urn"
A11_SEQ0_AAD = "436f756e742d30"  # "Count-0"
A11_SEQ0_PT = "4265617574792069732074727574682c20747275746820626561757479"
A11_SEQ0_CT = (
    "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a"
)


def test_the_suite_opens_the_rfc_9180_vector() -> None:
    """The suite is RFC 9180's: it opens Appendix A.1.1's first encryption.

    Sealing cannot be checked against the vector: cryptography draws the ephemeral key itself
    (no way to pass skEm). Every vector encryption has a non-empty AEAD aad, which the public
    API does not take, so this uses cryptography's own (private) aad entry point, the one its
    test suite checks these vectors with. Opening with the right key schedule (KEM, KDF,
    labels, info) and AEAD is the only way the tag verifies."""
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(A11_SKRM))
    assert (
        event_key_to_text(recipient.public_key())
        == base64.b64encode(bytes.fromhex(A11_PKRM)).decode()
    )
    # enc is the ephemeral public key (RFC 9180 §4.1: SerializePublicKey(pkE)).
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(A11_SKEM))
    assert (
        event_key_to_text(ephemeral.public_key())
        == base64.b64encode(bytes.fromhex(A11_ENC)).decode()
    )
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sealed = bytes.fromhex(A11_ENC + A11_SEQ0_CT)
    opened = rust_openssl.hpke._decrypt_with_aad(
        suite,
        sealed,
        recipient,
        info=bytes.fromhex(A11_INFO),
        aad=bytes.fromhex(A11_SEQ0_AAD),
    )
    assert opened == bytes.fromhex(A11_SEQ0_PT) == b"Beauty is truth, truth beauty"


def test_the_envelope_is_the_documented_construction() -> None:
    """version || the suite's enc || ciphertext, bound through info = version || aad: what
    the module docstring promises, checked with the suite itself rather than our opener."""
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    assert suite.decrypt(SEALED[1:], KEY, info=b"\x01" + AAD) == EVENT
    by_suite = b"\x01" + suite.encrypt(EVENT, KEY.public_key(), info=b"\x01" + AAD)
    assert open_envelope(KEY, by_suite, aad=AAD) == EVENT


# --- batches (version 2) ---------------------------------------------------------------------
KEY_AAD = batch_aad("traffic-accidents", "transport-node")
BATCH_EVENTS = [
    (f'{{"accident_id":"A-{i}","severity":{i % 4 + 1}}}'.encode(), event_aad(
        "traffic-accidents", "transport-node", f"evt-{i:04d}"
    ))
    for i in range(5)
]  # fmt: skip
BATCH = seal_batch(KEY.public_key(), BATCH_EVENTS, key_aad=KEY_AAD)


def test_a_batch_shares_one_sealed_data_key_and_each_envelope_opens_alone() -> None:
    heads = {envelope[: 1 + ENC_BYTES + 32] for envelope in BATCH}
    assert len(heads) == 1 and BATCH[0][0] == 0x02  # one HPKE sealing for the batch
    for (event, aad), envelope in zip(BATCH_EVENTS, BATCH, strict=True):
        assert len(envelope) == len(event) + BATCH_OVERHEAD
        assert event not in envelope
        # In any order, one at a time: the broker delivers and trims them one by one.
        assert open_envelope(KEY, envelope, aad=aad, key_aad=KEY_AAD) == event
    # Another batch of the same events uses another data key.
    again = seal_batch(KEY.public_key(), BATCH_EVENTS, key_aad=KEY_AAD)
    assert again[0][: 1 + ENC_BYTES] != BATCH[0][: 1 + ENC_BYTES]


@given(position=st.integers(0, len(BATCH[2]) - 1), flip=st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_any_altered_byte_of_a_batch_envelope_is_detected(position: int, flip: int) -> None:
    tampered = bytearray(BATCH[2])
    tampered[position] ^= flip
    with pytest.raises(EnvelopeError):
        open_envelope(KEY, bytes(tampered), aad=BATCH_EVENTS[2][1], key_aad=KEY_AAD)


def test_a_batch_envelope_cannot_be_moved_or_swapped() -> None:
    envelope, aad = BATCH[1], BATCH_EVENTS[1][1]
    assert open_envelope(KEY, envelope, aad=aad, key_aad=KEY_AAD)  # its data key is cached now
    for key_aad in (
        batch_aad("bike-station-status", "transport-node"),  # another stream
        batch_aad("traffic-accidents", "district-node"),  # another recipient
    ):
        with pytest.raises(EnvelopeError, match="does not open"):
            open_envelope(KEY, envelope, aad=aad, key_aad=key_aad)
    # Swapped with another event of its batch (same data key, another id): its tag fails.
    with pytest.raises(EnvelopeError, match="does not open"):
        open_envelope(KEY, envelope, aad=BATCH_EVENTS[2][1], key_aad=KEY_AAD)
    # The cache of opened data keys is per recipient key: another node cannot use it.
    with pytest.raises(EnvelopeError, match="does not open"):
        open_envelope(OTHER_KEY, envelope, aad=aad, key_aad=KEY_AAD)
    with pytest.raises(EnvelopeError, match="needs its stream and recipient"):
        open_envelope(KEY, envelope, aad=aad)


@given(length=st.integers(0, len(BATCH[0]) - 1))
@settings(max_examples=100, deadline=None)
def test_a_truncated_batch_envelope_is_refused(length: int) -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(KEY, BATCH[0][:length], aad=BATCH_EVENTS[0][1], key_aad=KEY_AAD)
