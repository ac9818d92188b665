"""OpenAI's Batch API (``/v1/batches``): a batch is a ``run_batch`` job of the jobs worker."""
