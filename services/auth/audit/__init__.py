"""The audit log: what every feature records, read by an organization's owners and admins."""
