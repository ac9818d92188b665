"""Organizations: members and their roles, invitations."""
