"""PostgreSQL and Redis faults as a service sees them: refused, hung, restarted."""
