"""OpenAI's legacy APIs over chat: ``/v1/completions`` and the deprecated
``functions``/``function_call``."""
