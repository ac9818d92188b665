"""Chat completions, embeddings and models: the OpenAI-compatible calls over routed providers."""
