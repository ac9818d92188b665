"""Secrets of the auth service: password hashing, opaque tokens, API keys, encryption at rest."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import string
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet, InvalidToken

# argon2id with the library's RFC 9106 low-memory defaults
_hasher = PasswordHasher()

API_KEY_PREFIX = "ask_"
API_KEY_RANDOM_LEN = 40
API_KEY_SHOWN_PREFIX_LEN = 12
_KEY_ALPHABET = string.ascii_letters + string.digits

# a small list of passwords that are always guessed first (all at least 8 characters)
COMMON_PASSWORDS = frozenset(
    {
        "password",
        "password1",
        "password12",
        "password123",
        "password1234",
        "passw0rd",
        "p@ssw0rd",
        "p@ssword1",
        "12345678",
        "123456789",
        "1234567890",
        "12345678910",
        "0123456789",
        "87654321",
        "11111111",
        "00000000",
        "qwertyuiop",
        "qwerty123",
        "qwerty1234",
        "qwertyuiop1",
        "1q2w3e4r5t",
        "1qaz2wsx3edc",
        "asdfghjkl",
        "zxcvbnm123",
        "iloveyou",
        "iloveyou1",
        "sunshine1",
        "princess1",
        "football1",
        "baseball1",
        "welcome1",
        "welcome123",
        "letmein1",
        "letmein123",
        "trustno1",
        "superman1",
        "starwars1",
        "dragon123",
        "monkey123",
        "master123",
        "shadow123",
        "abc12345",
        "abcd1234",
        "abcdefgh",
        "abcdefghij",
        "admin123",
        "administrator",
        "changeme",
        "changeme123",
        "secret123",
        "computer1",
        "internet",
        "whatever1",
        "aa123456",
        "qwe123qwe",
        "q1w2e3r4t5",
        "zaq12wsx",
        "password!",
        "passwordpassword",
        "correcthorsebatterystaple",
    }
)


def hash_password(password: str) -> str:
    """argon2id hash of ``password`` (CPU-bound: call through :func:`hash_password_async`)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-work check; an account without a password hashes a dummy so timing matches."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_opaque_token() -> str:
    """A 256-bit URL-safe random token (refresh tokens, email links, invites)."""
    return secrets.token_urlsafe(32)


def new_api_key() -> str:
    """``ask_`` followed by 40 random letters and digits."""
    return API_KEY_PREFIX + "".join(
        secrets.choice(_KEY_ALPHABET) for _ in range(API_KEY_RANDOM_LEN)
    )


def looks_like_api_key(value: str) -> bool:
    return (
        value.startswith(API_KEY_PREFIX)
        and len(value) == len(API_KEY_PREFIX) + API_KEY_RANDOM_LEN
        and all(c in _KEY_ALPHABET for c in value[len(API_KEY_PREFIX) :])
    )


def new_recovery_code() -> str:
    """``xxxxx-xxxxx`` in lower-case letters and digits (about 51 bits)."""
    alphabet = string.ascii_lowercase + string.digits
    raw = "".join(secrets.choice(alphabet) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def normalise_recovery_code(code: str) -> str:
    raw = "".join(c for c in code.lower() if c.isalnum())
    return f"{raw[:5]}-{raw[5:]}"


class Cipher:
    """Symmetric encryption at rest (Fernet) with a key derived from a configured secret."""

    def __init__(self, secret: str) -> None:
        key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
        self._fernet = Fernet(key)

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise RuntimeError(
                "cannot decrypt a stored secret: AUTH_KEY_ENCRYPTION_SECRET changed?"
            ) from exc
