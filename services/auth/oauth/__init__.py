"""Sign-in with external providers (OpenID Connect, WeChat, WeCom) and their linked identities."""
