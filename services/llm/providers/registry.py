"""Provider adapters discovered through entry points, so a package can add a provider.

A third-party package declares, in its ``pyproject.toml``::

    [project.entry-points."aistack.llm_providers"]
    mycloud = "mycloud_aistack:MyCloudProvider"   # a services.llm.providers.base.Provider

and ``kind: mycloud`` then works in the routing configuration.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from services.llm.providers.base import Provider, ProviderError

GROUP = "aistack.llm_providers"


class UnknownProviderKind(ProviderError):
    """No installed adapter has this kind (a configuration error)."""


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def kinds() -> list[str]:
    """The adapter kinds installed in this environment."""
    return sorted(_entry_points())


@functools.cache
def provider_class(kind: str) -> type[Provider]:
    """The adapter class registered under ``kind``."""
    entry = _entry_points().get(kind)
    if entry is None:
        raise UnknownProviderKind(
            f"unknown provider kind {kind!r}; installed kinds: {', '.join(kinds()) or 'none'} "
            f"(adapters register in the {GROUP!r} entry point group)",
            status=500,
            code="unknown_provider_kind",
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise UnknownProviderKind(
            f"entry point {kind!r} ({entry.value}) is not a Provider subclass",
            status=500,
            code="unknown_provider_kind",
        )
    return cls


def build_provider(kind: str, name: str, config: dict[str, Any]) -> Provider:
    """A configured provider instance: ``kind`` picks the adapter, ``name`` labels it."""
    return provider_class(kind)(name, dict(config))
