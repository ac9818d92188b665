"""OpenAI's attribute filters as SQL over a store file's ``attributes`` (jsonb)."""

from __future__ import annotations

from typing import Any

import orjson

from services.rag.search.schemas import ComparisonFilter, CompoundFilter, Filter

_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class FilterSQL:
    """Builds one boolean SQL expression with numbered bind parameters."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.params: dict[str, Any] = {}

    def _bind(self, value: Any) -> str:
        name = f"flt{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def build(self, f: Filter) -> str:
        if isinstance(f, CompoundFilter):
            joiner = " AND " if f.type == "and" else " OR "
            return "(" + joiner.join(self.build(x) for x in f.filters) + ")"
        return self._comparison(f)

    def _comparison(self, f: ComparisonFilter) -> str:
        key = self._bind(f.key)
        attr = f"({self.column} -> {key})"
        if f.type in ("eq", "ne"):
            value = self._bind(orjson.dumps(f.value).decode())
            op = "=" if f.type == "eq" else "IS DISTINCT FROM"
            return f"({attr} {op} CAST({value} AS jsonb))"
        if f.type in ("in", "nin"):
            values = self._bind(orjson.dumps(f.value).decode())
            inside = f"(jsonb_build_array({attr}) <@ CAST({values} AS jsonb))"
            return inside if f.type == "in" else f"({attr} IS NULL OR NOT {inside})"
        op = _ORDER[f.type]
        if isinstance(f.value, bool):
            value = self._bind(orjson.dumps(f.value).decode())
            return f"({attr} {op} CAST({value} AS jsonb))"
        if isinstance(f.value, int | float):
            value = self._bind(float(f.value))
            # CASE: the cast runs only on numbers (AND would not guarantee the order)
            number = (
                f"CASE WHEN jsonb_typeof({attr}) = 'number' "
                f"THEN CAST({self.column} ->> {key} AS double precision) END"
            )
            return f"({number} {op} {value})"
        value = self._bind(str(f.value))
        return f"(jsonb_typeof({attr}) = 'string' AND ({self.column} ->> {key}) {op} {value})"
