"""Azure OpenAI adapter: the OpenAI wire format with deployments in the URL.

``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...``

Config: ``endpoint`` (``https://<resource>.openai.azure.com``; ``base_url`` is accepted as
an alias), ``api_key`` / ``api_key_env`` (default AZURE_OPENAI_API_KEY, sent as the
``api-key`` header), or ``azure_ad_token`` / ``azure_ad_token_env`` (a Microsoft Entra
token, sent as a bearer token), ``api_version`` (default :data:`API_VERSION`),
``deployments`` (model name → deployment name; a model without an entry is used as the
deployment name itself), ``models`` (static list; default: the ``deployments`` keys),
``timeout`` / ``connect_timeout``, ``headers``, ``defaults``, ``stream_usage``,
``transport`` (tests).
"""

from __future__ import annotations

import os
from urllib.parse import quote

from services.llm.providers import _http as vendor_http
from services.llm.providers.base import ModelInfo, ProviderError
from services.llm.providers.openai import JSON_HEADERS, OpenAIProvider

#: The latest GA data-plane inference version (supports stream_options.include_usage).
API_VERSION = "2024-10-21"
DEFAULT_KEY_ENV = "AZURE_OPENAI_API_KEY"


class AzureOpenAIProvider(OpenAIProvider):
    kind = "azure"
    default_key_env = DEFAULT_KEY_ENV
    owned_by = "azure"

    def _base_url(self) -> str:
        endpoint = self.config.get("endpoint") or self.config.get("base_url")
        if not endpoint:
            raise ProviderError(
                f"azure provider {self.name}: 'endpoint' is required "
                "(https://<resource>.openai.azure.com)",
                status=500,
                provider=self.name,
                code="provider_misconfigured",
            )
        return str(endpoint).rstrip("/")

    def _headers(self) -> dict[str, str]:
        headers = dict(JSON_HEADERS)
        token = self.config.get("azure_ad_token")
        if not token and self.config.get("azure_ad_token_env"):
            token = os.environ.get(str(self.config["azure_ad_token_env"]))
        if token:
            headers["authorization"] = f"Bearer {token}"
        else:
            key = vendor_http.api_key({"api_key_env": self.default_key_env, **self.config})
            if key:
                headers["api-key"] = key
        return headers

    def deployment(self, model: str) -> str:
        """The deployment serving ``model`` (the model name itself when not mapped)."""
        deployments = self.config.get("deployments") or {}
        return str(deployments.get(model) or model)

    def _url(self, operation: str, model: str | None) -> str:
        if model is None:
            return f"/openai/{operation}"
        return f"/openai/deployments/{quote(self.deployment(model), safe='')}/{operation}"

    def _params(self) -> dict[str, str]:
        return {"api-version": str(self.config.get("api_version") or API_VERSION)}

    async def list_models(self) -> list[ModelInfo]:
        static = self._static_models()
        if static is not None:
            return static
        # Azure's model list names base models, not this resource's deployments
        return [
            ModelInfo(id=str(m), owned_by=self.owned_by)
            for m in self.config.get("deployments") or {}
        ]
