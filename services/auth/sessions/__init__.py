"""Sessions: sign-in with a password, refresh tokens, sign-out, the devices list, switching
organization, failed sign-in limits, and the session revocations every gateway must learn."""
