"""What keeps the console's pages safe: response headers, CSRF tokens before sign-in, the
sealed first step of a two-step sign-in, and safe redirects.

Signed-in pages use the session's own CSRF token (``qiao.identity.sessions``). Before
sign-in there is no session, yet the sign-in form still needs a token (login CSRF: a
forged sign-in would put the victim into the attacker's account). The console gives the
browser a random ``qiao_console_csrf`` cookie and puts HMAC(server key, cookie) in the form:
the signed double-submit pattern of OWASP's CSRF Prevention Cheat Sheet, which a cookie
planted by a sibling host cannot satisfy without the server key.

Between the password step and the code step, the console keeps the sign-in name and
password sealed (Fernet: AES-128-CBC + HMAC-SHA-256, with a timestamp checked against a
five-minute limit) in an HttpOnly cookie limited to the sign-in path, and asks the identity
service again with the code: the service checks the password and the code together, counts
the attempt and locks out exactly as it does for the JSON API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qiao import pki

PREFIX = "/console"
STATIC = "/console/static"
PRE_SESSION_COOKIE = "qiao_console_csrf"
PENDING_COOKIE = "qiao_console_pending"
PENDING_SECONDS = 300
KEY_FILE = "console-secret.key"

# CSP Level 3: no inline script or style anywhere (the pages' only stylesheet is a file), no
# framing (clickjacking), forms post only to the hub, no <base> games; QR codes are data: SVG.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
PAGE_HEADERS: dict[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # The Referer still goes to the hub itself, where the origin check may fall back on it.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",  # frame-ancestors for browsers without CSP 2
    "cross-origin-opener-policy": "same-origin",
}
# Pages show people's data and one-time secrets (recovery codes): never stored by any
# cache (RFC 9111 §5.2.2.5). Static files carry the version in their URL and may be kept.
NO_STORE = "no-store"
STATIC_CACHE = "public, max-age=86400"


class SecurityHeaders:
    """ASGI middleware: the headers above on every response under ``/console`` (and the
    redirect at ``/``), whatever produced it — a page, a static file, an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/" or path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        cache = STATIC_CACHE if path.startswith(STATIC + "/") else NO_STORE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in {b"cache-control", *_PAGE_HEADER_NAMES}
                ]
                headers += [(k.encode(), v.encode()) for k, v in PAGE_HEADERS.items()]
                headers.append((b"cache-control", cache.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_PAGE_HEADER_NAMES = {k.encode() for k in PAGE_HEADERS}


@dataclass(frozen=True)
class ConsoleKeys:
    """Keys derived (HKDF, RFC 5869) from one secret kept beside the hub's other keys, so
    that every hub replica sharing the data directory accepts the others' tokens."""

    csrf: bytes
    pending: Fernet

    @classmethod
    def load_or_create(cls, data_dir: Path) -> ConsoleKeys:
        path = data_dir / KEY_FILE
        if not path.exists():
            pki.write_private(path, secrets.token_bytes(32))
        secret = path.read_bytes()

        def derive(label: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(secret)

        return cls(
            csrf=derive(b"qiao console pre-session csrf v1"),
            pending=Fernet(base64.urlsafe_b64encode(derive(b"qiao console pending sign-in v1"))),
        )

    def pre_session_token(self, cookie: str) -> str:
        mac = hmac.new(self.csrf, cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def pre_session_matches(self, cookie: str | None, presented: str) -> bool:
        if not cookie or not presented:
            return False
        return hmac.compare_digest(self.pre_session_token(cookie), presented)

    def seal_pending(self, username: str, password: str) -> str:
        return self.pending.encrypt(json.dumps({"u": username, "p": password}).encode()).decode()

    def open_pending(self, sealed: str | None) -> tuple[str, str] | None:
        """(sign-in name, password) from a sealed first step, or None when it is missing,
        forged or older than ``PENDING_SECONDS``."""
        if not sealed:
            return None
        try:
            data = json.loads(self.pending.decrypt(sealed.encode(), ttl=PENDING_SECONDS))
        except (InvalidToken, ValueError):
            return None
        return str(data["u"]), str(data["p"])


def new_pre_session_cookie() -> str:
    return secrets.token_urlsafe(32)


def safe_next(target: str | None, default: str = PREFIX + "/", *, sign_in: bool = False) -> str:
    """Where to go after signing in: a path inside the console, never another site (an open
    redirect would lend the hub's name to phishing). ``//evil`` and ``/\\evil`` are
    network-path references to browsers (RFC 3986 §4.2), so they are refused too. The
    sign-in pages are no place to come back to after signing in; ``sign_in`` allows them
    (the language switch returns to the page it was used on)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or target.startswith("//"):
        return default
    if not (parts.path == PREFIX + "/" or parts.path.startswith(PREFIX + "/")):
        return default
    if parts.path.startswith(STATIC) or (
        parts.path.startswith(PREFIX + "/sign-in") and not sign_in
    ):
        return default
    return target
