"""Access tokens: the rotating signing keys, the JWKS that gateways verify tokens with."""
