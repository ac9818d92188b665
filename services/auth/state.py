"""What the auth app holds for its life (typed): settings, the signing-key cache, and the
identity providers' discovery documents, keys and access tokens."""

from __future__ import annotations

from typing import Any

from libs.state import AppState
from services.auth.settings import AuthSettings
from services.auth.tokens.keys import KeyCache


class AuthState(AppState):
    settings: AuthSettings
    signing_key_cache: KeyCache
    oauth_cache: dict[str, Any]
