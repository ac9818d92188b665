"""TOTP enrolment: a secret, confirmed by a first code, which yields recovery codes."""

from __future__ import annotations

import pyotp

from libs.errors import BadRequest, Conflict
from services.auth.core.context import AuthContext, utcnow
from services.auth.core.feature_service import FeatureService
from services.auth.core.security import (
    Cipher,
    new_recovery_code,
    sha256_hex,
    verify_password_async,
)
from services.auth.totp.codes import RECOVERY_CODES, TOTP_ISSUER, check_totp, second_factor


class TotpService(FeatureService):
    def __init__(self, ctx: AuthContext) -> None:
        super().__init__(ctx)
        self.cipher = Cipher(ctx.settings.key_encryption_secret)

    async def totp_enroll(self) -> dict[str, str]:
        user, _ = await self.current_user()
        if user.totp_enabled_at is not None:
            raise Conflict("TOTP is already enabled", code="totp_already_enabled")
        secret = pyotp.random_base32()
        user.totp_secret_enc = self.cipher.encrypt(secret.encode())
        user.totp_last_step = None
        await self.session.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
        return {"secret": secret, "otpauth_uri": uri}

    async def totp_verify(self, code: str) -> list[str]:
        user, sess = await self.current_user()
        if user.totp_enabled_at is not None:
            raise Conflict("TOTP is already enabled", code="totp_already_enabled")
        if user.totp_secret_enc is None:
            raise BadRequest("Enroll first (POST /v1/auth/totp/enroll)", code="totp_not_enrolled")
        if not check_totp(user, self.cipher, code):
            raise BadRequest("Invalid TOTP code", code="invalid_totp_code")
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        user.recovery_code_hashes = [sha256_hex(c) for c in codes]
        user.totp_enabled_at = utcnow()
        await self.audit_user("auth.totp.enabled", user, self._acting_org(user, sess))
        return codes

    async def totp_disable(self, password: str, code: str) -> None:
        user, sess = await self.current_user()
        if user.totp_enabled_at is None:
            raise BadRequest("TOTP is not enabled", code="totp_not_enabled")
        if not await verify_password_async(user.password_hash, password):
            raise BadRequest("The password is wrong", code="invalid_password")
        if not second_factor(user, self.cipher, code, code):
            raise BadRequest("Invalid TOTP or recovery code", code="invalid_totp_code")
        user.totp_enabled_at = None
        user.totp_secret_enc = None
        user.totp_last_step = None
        user.recovery_code_hashes = []
        await self.audit_user("auth.totp.disabled", user, self._acting_org(user, sess))
