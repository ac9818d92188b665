"""Counting tokens offline: quick estimates (:mod:`.estimate`) for limits and usage, exact counts
(:mod:`.tokenizer`) for trimming a conversation to a model's context window."""
