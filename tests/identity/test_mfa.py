import base64
from datetime import UTC, datetime

import pyotp
import pytest

from qiao.identity import mfa

# RFC 6238 Appendix B: the SHA-1 seed "12345678901234567890"; the last six digits of the
# published eight-digit values are the six-digit codes.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
VECTORS = [
    (59, "287082"),
    (1111111109, "081804"),
    (1111111111, "050471"),
    (1234567890, "005924"),
    (2000000000, "279037"),
    (20000000000, "353130"),
]


@pytest.mark.parametrize(("t", "code"), VECTORS)
def test_rfc6238_vectors(t: int, code: str) -> None:
    assert mfa.code_at(RFC_SECRET, t // 30) == code
    at = datetime.fromtimestamp(t, UTC)
    assert mfa.matching_step(RFC_SECRET, code, at, 0) == t // 30


def test_a_code_is_accepted_once_and_one_step_of_drift_either_way() -> None:
    at = datetime.fromtimestamp(1111111111, UTC)
    step = mfa.time_step(at)
    code = mfa.code_at(RFC_SECRET, step)
    assert mfa.matching_step(RFC_SECRET, code, at, 0) == step
    # Replayed: the step was already used.
    assert mfa.matching_step(RFC_SECRET, code, at, step) is None
    # The previous and next step's codes are accepted, two steps away are not.
    assert mfa.matching_step(RFC_SECRET, mfa.code_at(RFC_SECRET, step - 1), at, 0) == step - 1
    assert mfa.matching_step(RFC_SECRET, mfa.code_at(RFC_SECRET, step + 1), at, 0) == step + 1
    assert mfa.matching_step(RFC_SECRET, mfa.code_at(RFC_SECRET, step - 2), at, 0) is None
    # An older code than the last accepted one is refused even inside the drift window.
    assert mfa.matching_step(RFC_SECRET, mfa.code_at(RFC_SECRET, step - 1), at, step) is None


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "12 34 5x", "９９９９９９"])
def test_malformed_codes_are_refused(bad: str) -> None:
    assert mfa.matching_step(RFC_SECRET, bad, datetime.now(UTC), 0) is None


def test_enrollment_material() -> None:
    secret = mfa.new_secret()
    assert len(base64.b32decode(secret)) == 20  # 160 bits (RFC 4226 §4)
    uri = mfa.provisioning_uri(secret, "police-approver", "Qiao CN-DEMO")
    assert uri.startswith("otpauth://totp/Qiao%20CN-DEMO:police-approver?")
    assert f"secret={secret}" in uri
    assert pyotp.parse_uri(uri).secret == secret
    qr = mfa.qr_data_uri(uri)
    assert qr.startswith("data:image/svg+xml;base64,")
    assert b"<svg" in base64.b64decode(qr.split(",", 1)[1])


def test_recovery_codes_are_random_and_their_digest_ignores_formatting() -> None:
    codes = mfa.new_recovery_codes()
    assert len(codes) == 10 == len(set(codes))
    c = codes[0]
    assert len(c) == 19 and c.count("-") == 3
    assert mfa.recovery_code_digest(c) == mfa.recovery_code_digest(c.upper().replace("-", " "))
    assert mfa.recovery_code_digest(c) != mfa.recovery_code_digest(codes[1])
