"""Where a model alias goes: the routing file (:mod:`.config`), calling its targets in order
with retries and fallback (:mod:`.dispatch`), and a circuit breaker per provider shared by
every llm process (:mod:`.breaker`)."""
