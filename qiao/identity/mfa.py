"""Second factors: TOTP (RFC 6238) and single-use recovery codes. Pure functions; the
identity service keeps the state (the secret, the last accepted time step, code digests).

TOTP parameters are the ones every authenticator app understands: HMAC-SHA-1, 6 digits,
30-second steps (RFC 6238 §4, §5.2; the otpauth URI format of Google Authenticator's Key
Uri Format). One step of clock drift either way is tolerated (§5.2 recommends at most one).
A code is accepted only for a time step later than the last accepted one, so an observed
code cannot be replayed, not even within its own 30 seconds (§5.2: "MUST NOT accept the
second attempt of the same OTP after the successful validation").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
from datetime import datetime

import pyotp
import segno

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
RECOVERY_CODES = 10


def new_secret() -> str:
    """A fresh 160-bit shared secret, base32 (RFC 4226 §4 asks for 128 bits, recommends 160)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app scans."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer
    )


def qr_data_uri(uri: str) -> str:
    """The URI as a QR code, an SVG ``data:`` URI a page can show in an ``<img>``."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode()


def time_step(at: datetime) -> int:
    return int(at.timestamp()) // STEP_SECONDS


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).at(step * STEP_SECONDS)


def matching_step(secret: str, code: str, at: datetime, last_step: int) -> int | None:
    """The time step ``code`` belongs to if it is valid at ``at`` and newer than
    ``last_step``; ``None`` otherwise (wrong, too old, or already used)."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    now = time_step(at)
    found = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        # Compare every candidate so the time taken does not say which one matched.
        if hmac.compare_digest(code_at(secret, step), code) and step > last_step:
            found = step
    return found


def new_recovery_codes(n: int = RECOVERY_CODES) -> list[str]:
    """Codes of 80 random bits each, written as four groups of four base32 characters."""
    codes = []
    for _ in range(n):
        raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def recovery_code_digest(code: str) -> str:
    """The stored form of a recovery code; spaces, dashes and case do not matter.

    80 random bits leave nothing to brute-force, so SHA-256 suffices (as for tokens)."""
    normal = code.strip().lower().replace("-", "").replace(" ", "")
    return hashlib.sha256(normal.encode()).hexdigest()
