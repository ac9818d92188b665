"""Conversations: ``/v1/conversations`` and the ``conversation_id`` of a chat request."""
