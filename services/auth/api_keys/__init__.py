"""API keys: an organization's keys, and their introspection for the gateway."""
