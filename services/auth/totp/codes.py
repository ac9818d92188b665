"""Second-factor codes: TOTP (each time step accepted once) and one-time recovery codes."""

from __future__ import annotations

import hmac
import time

import pyotp

from services.auth.core.security import Cipher, normalise_recovery_code, sha256_hex
from services.auth.models import User

RECOVERY_CODES = 10
TOTP_ISSUER = "aistack"


def totp_of(user: User, cipher: Cipher) -> pyotp.TOTP:
    assert user.totp_secret_enc is not None
    return pyotp.TOTP(cipher.decrypt(user.totp_secret_enc).decode())


def check_totp(user: User, cipher: Cipher, code: str) -> bool:
    if user.totp_secret_enc is None or not code.isdigit():
        return False
    totp = totp_of(user, cipher)
    step_now = int(time.time()) // totp.interval
    for step in (step_now - 1, step_now, step_now + 1):
        # a code is accepted once: a replayed (or older) step is refused
        if user.totp_last_step is not None and step <= user.totp_last_step:
            continue
        if hmac.compare_digest(totp.at(step * totp.interval), code):
            user.totp_last_step = step
            return True
    return False


def use_recovery_code(user: User, code: str) -> bool:
    digest = sha256_hex(normalise_recovery_code(code))
    codes = list(user.recovery_code_hashes or [])
    for stored in codes:
        if hmac.compare_digest(stored, digest):
            codes.remove(stored)
            user.recovery_code_hashes = codes
            return True
    return False


def second_factor(user: User, cipher: Cipher, totp_code: str | None, recovery: str | None) -> bool:
    """A TOTP code, else a recovery code (spent when it matches)."""
    if totp_code and check_totp(user, cipher, totp_code):
        return True
    return bool(recovery) and use_recovery_code(user, recovery or "")
