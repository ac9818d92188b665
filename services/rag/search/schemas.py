"""OpenAI's vector store search request and results, with aistack's additions (``mode``, fusion
weights, several stores at once)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import JsonDict

MAX_FILTERS = 50
MAX_DEPTH = 5

Query = Annotated[str, StringConstraints(min_length=1, max_length=4000)]


# a list of values for in / nin (at most 100), one value for the other comparisons
_LIST_TYPES = ["in", "nin"]
_ONE_TYPES = ["eq", "ne", "gt", "gte", "lt", "lte"]
COMPARISON_SCHEMA: JsonDict = {
    "anyOf": [
        {
            "required": ["type"],
            "properties": {
                "type": {"enum": [*_LIST_TYPES]},
                "value": {"type": "array", "maxItems": 100},
            },
        },
        {
            "properties": {"type": {"enum": [*_ONE_TYPES]}, "value": {"not": {"type": "array"}}},
        },
    ]
}


class ComparisonFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=COMPARISON_SCHEMA)

    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"] = "eq"
    key: str = Field(min_length=1, max_length=64)
    value: str | float | bool | list[str | float]

    @model_validator(mode="after")
    def _value_fits(self) -> ComparisonFilter:
        listed = isinstance(self.value, list)
        if self.type in ("in", "nin") and not listed:
            raise ValueError(f"'{self.type}' compares with a list of values")
        if self.type not in ("in", "nin") and listed:
            raise ValueError(f"'{self.type}' compares with one value, not a list")
        if listed and len(self.value) > 100:  # type: ignore[arg-type]
            raise ValueError("at most 100 values")
        return self


class CompoundFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["and", "or"]
    filters: list[ComparisonFilter | CompoundFilter] = Field(min_length=1, max_length=MAX_FILTERS)


Filter = ComparisonFilter | CompoundFilter


def _size(f: Filter, depth: int = 1) -> int:
    if depth > MAX_DEPTH:
        raise ValueError(f"filters nest at most {MAX_DEPTH} deep")
    if isinstance(f, ComparisonFilter):
        return 1
    return 1 + sum(_size(x, depth + 1) for x in f.filters)


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0, le=1)


class SearchRequest(BaseModel):
    """OpenAI's VectorStoreSearchRequest, plus aistack's optional ``mode`` and weights."""

    model_config = ConfigDict(
        extra="forbid",
        # in hybrid mode (the default) at least one of the weights is above 0
        json_schema_extra={
            "not": {
                "required": ["vector_weight", "fulltext_weight"],
                "properties": {
                    "mode": {"const": "hybrid"},
                    "vector_weight": {"const": 0},
                    "fulltext_weight": {"const": 0},
                },
            }
        },
    )

    query: Query | list[Query] = Field(
        description="a query, or several (1 to 10) searched as one",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 4000},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10,
                    "items": {"type": "string", "minLength": 1, "maxLength": 4000},
                },
            ]
        },
    )
    rewrite_query: bool = Field(
        default=False,
        description="rewrite the question into a search query before searching (aistack: "
        "question words, stopwords and punctuation dropped, Chinese segmented; deterministic, "
        "no model call); the text searched is returned in `search_query`",
    )
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: Filter | None = Field(
        default=None,
        description=f"at most {MAX_FILTERS} filters, nested at most {MAX_DEPTH} deep",
    )
    ranking_options: RankingOptions | None = None
    mode: Literal["hybrid", "vector", "fulltext"] = Field(
        default="hybrid",
        description="aistack: `vector` (embedding similarity), `fulltext` (keywords, Chinese "
        "segmented) or `hybrid` (both, fused by reciprocal rank)",
    )
    vector_weight: float = Field(
        default=1.0, ge=0, le=10, description="aistack: the vector ranking's weight in hybrid"
    )
    fulltext_weight: float = Field(
        default=1.0, ge=0, le=10, description="aistack: the keyword ranking's weight in hybrid"
    )

    @model_validator(mode="after")
    def _checks(self) -> SearchRequest:
        if isinstance(self.query, list) and not 1 <= len(self.query) <= 10:
            raise ValueError("give 1 to 10 queries")
        if self.filters is not None and _size(self.filters) > MAX_FILTERS:
            raise ValueError(f"at most {MAX_FILTERS} filters")
        if self.mode == "hybrid" and self.vector_weight == self.fulltext_weight == 0:
            raise ValueError("at least one of the weights must be above 0")
        return self

    def queries(self) -> list[str]:
        return self.query if isinstance(self.query, list) else [self.query]


class MultiSearchRequest(SearchRequest):
    """aistack: one search over several of the organization's stores."""

    vector_store_ids: list[Annotated[str, StringConstraints(max_length=200)]] = Field(
        min_length=1, max_length=20, description="the stores searched together"
    )


class ResultContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any] | None
    content: list[ResultContent]
    vector_store_id: str = Field(description="aistack: the store the chunk is in")


class SearchResultsPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: str | None = None
