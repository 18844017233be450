"""Session tokens, their CSRF tokens, and the rules that end a session. Pure functions.

The cookie carries a 256-bit random token; the hub keeps only its SHA-256 digest, so a copy
of the database does not let anyone act as a signed-in user (OWASP Session Management,
"session ID storage"). The CSRF token is derived from the session token with HMAC
(the "signed double-submit" pattern bound to the session, OWASP CSRF Prevention): the hub
can hand it out again for the same session without storing it, and it is worthless
without the cookie it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

COOKIE = "qiao_session"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_PREFIX = "qss_"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # RFC 9110 §9.2.1


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    mac = hmac.new(session_token.encode(), b"qiao csrf v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_matches(session_token: str, presented: str) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session_token), presented)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower case (RFC 6454 §6.2 serialization)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


@dataclass(frozen=True)
class Timeouts:
    idle: timedelta
    absolute: timedelta

    def expired(
        self, *, created: datetime, last_seen: datetime, expires: datetime, now: datetime
    ) -> str | None:
        """Why the session is over at ``now``, or ``None`` if it is still good."""
        if now >= expires or now - created >= self.absolute:
            return "absolute timeout"
        if now - last_seen >= self.idle:
            return "idle timeout"
        return None
