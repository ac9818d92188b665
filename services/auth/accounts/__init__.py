"""Accounts: registration, email verification, password reset and change, the signed-in user."""
