"""Passwords: the policy a new password must meet, and Argon2id hashing.

Hashing follows RFC 9106 (Argon2). The default cost is its second recommended option (§4):
Argon2id, t=3 passes, m=64 MiB, p=4 lanes, 16-byte salt, 32-byte tag. The cost is a hub
setting; a stored hash made with other parameters is re-hashed at the next successful
sign-in, so raising the cost takes effect without asking anyone to change their password.

The policy follows NIST SP 800-63B §3.1.1.2 in spirit: length matters most, known-common
passwords are refused, and the password may not contain the sign-in name. Since many
government IT rules (GB/T 22239-2019 等保 8.1.4.1) still ask for "complexity", a password
shorter than 16 characters must mix at least three of: lower case, upper case, digits,
other characters; from 16 characters on a passphrase of plain words is accepted.
"""

from __future__ import annotations

import json
import secrets
import string
from functools import cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_LENGTH = 256  # hashing an unbounded input is a denial-of-service lever
PASSPHRASE_LENGTH = 16


class WeakPassword(ValueError):
    """The password does not meet the policy; the message says which rule and how to fix it."""


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of passwords seen in leaks and default configurations (lower case)."""
    text = resources.files("qiao.identity").joinpath("common_passwords.json").read_text("utf-8")
    return frozenset(json.loads(text))


def _classes(password: str) -> int:
    kinds = (
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    )
    return sum(kinds)


def check_policy(password: str, username: str, *, min_length: int = 12) -> None:
    """Raise ``WeakPassword`` naming the first rule ``password`` breaks."""
    if len(password) < min_length:
        raise WeakPassword(f"the password needs at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password may have at most {MAX_LENGTH} characters")
    lowered = password.lower()
    if username and username.lower() in lowered:
        raise WeakPassword("the password must not contain the sign-in name")
    if lowered in common_passwords():
        raise WeakPassword("the password is on the list of common passwords; choose another")
    if len(set(password)) < 4:
        raise WeakPassword("the password repeats too few different characters")
    if len(password) < PASSPHRASE_LENGTH and _classes(password) < 3:
        raise WeakPassword(
            f"a password shorter than {PASSPHRASE_LENGTH} characters must mix three of: "
            "lower case, upper case, digits, other characters"
        )


def generate_password(length: int = 20) -> str:
    """A random initial password that meets the policy (about 110 bits)."""
    alphabet = string.ascii_letters + string.digits + "-_.!@#"
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if _classes(candidate) >= 3:
            return candidate


class PasswordHashing:
    """Argon2id with the hub's configured cost."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4):
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # Checking an unknown account costs as much as checking a real one, so the answer
        # time does not tell whether the account exists.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored`` (constant work when ``stored`` is empty)."""
        if len(password) > MAX_LENGTH:
            return False
        try:
            return self._hasher.verify(stored or self._dummy, password) and bool(stored)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
