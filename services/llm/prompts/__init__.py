"""The prompt store: ``/v1/prompts`` and the ``prompt`` of a chat request."""
