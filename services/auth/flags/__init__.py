"""Feature flags: the admin API, the definitions every service reads from Redis, evaluation."""
