"""Second factor: TOTP enrolment and one-time recovery codes."""
