"""The README's configuration table, generated from the settings classes.

    python -m deploy.config_table            print the table
    python -m deploy.config_table --write    rewrite it inside README.md (``make docs``)

A test compares README.md with this output, so the table cannot drift from the code.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from libs.registry import SERVICES
from libs.settings import SHARED_FIELDS, ServiceSettings

START, END = "<!-- config:start -->", "<!-- config:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"

APPS: tuple[tuple[str, str, str], ...] = (
    ("gateway", "gateway.settings", "GatewaySettings"),
    *((name, *s.settings) for name, s in SERVICES.items()),
)

# read by the local runner (deploy/local/run.py), not by a settings class
RUNNER: tuple[tuple[str, str, str], ...] = (
    ("AISTACK_DATA_DIR", "`.data/local`", "where the embedded PostgreSQL and Redis keep data"),
    ("AISTACK_HOST", "`127.0.0.1`", "interface every local process binds to"),
    ("AISTACK_EMBEDDED_PG_PORT", "`54329`", "embedded PostgreSQL port"),
    ("AISTACK_EMBEDDED_REDIS_PORT", "`63799`", "embedded Redis port"),
    (
        "AISTACK_APPS",
        "`grouped`",
        "`grouped`: the gateway and the llm a process each, auth, rag, jobs and billing in one "
        "(each app on its own port; ~80 MiB less idle memory an app); `one`: all six in one "
        "process (one core for all); `per-service`: a uvicorn process each (as compose)",
    ),
    (
        "AISTACK_WORKERS",
        "`1`",
        "`1`: every service's jobs in one worker process; `per-service`: one each (as "
        "compose); `0`: none",
    ),
    ("AISTACK_WORKER_METRICS_PORT", "`9010`", "the one worker process's metrics listener"),
    (
        "AISTACK_MAIL_PORT",
        "`1025`",
        "local mail sink printing mails (when `AUTH_SMTP_HOST` is unset)",
    ),
    ("GATEWAY_PORT, AUTH_PORT, …", "8000 … 8005", "each process's port"),
    ("TEST_DATABASE_URL / TEST_REDIS_URL", "embedded", "servers the test suite uses"),
)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if value is None or value == "" or value == []:
        return "—"
    if "secret" in str(field.alias or "") or (isinstance(value, str) and "change-me" in value):
        return "dev value (refused in production)"
    return f"`{value}`"


SHARED_MEANING = {
    "database_url": "PostgreSQL (asyncpg URL); unset under `make run`: the embedded one",
    "db_pool_size": "connections per process",
    "environment": "`development`, `test` or `production` (production refuses default secrets)",
    "internal_token_secret": "signs the gateway → service identity token (32+ chars)",
    "log_json": "JSON log lines (`make run` sets `false` for readable lines)",
    "log_level": "log level",
    "max_body_bytes": "largest request body accepted (413 above)",
    "otlp_endpoint": "OTLP/HTTP traces endpoint; unset: no export",
    "redis_url": "Redis URL; unset under `make run`: the embedded one",
}
_FIELD = re.compile(r"^\s+(\w+)\s*:")


def _comments(cls: type) -> dict[str, str]:
    """Comment lines written right above each field in the class source."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = _FIELD.match(line)
        if match and pending:
            found[match.group(1)] = " ".join(pending)
        pending = []
    return found


def _describe(field: FieldInfo, comment: str = "") -> str:
    text = field.description or comment
    return text.replace("|", "\\|").replace("\n", " ")


def _prefix(cls: type[ServiceSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def table() -> str:
    """Markdown: the shared variables, then each app's own."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    base = ServiceSettings.model_fields
    for name in sorted(SHARED_FIELDS):
        field = base[name]
        desc = SHARED_MEANING.get(name) or _describe(field)
        rows.append(f"| `{name.upper()}` | {_default(field)} | {desc} |")
    for env, default, desc in RUNNER:
        rows.append(f"| `{env}` | {default} | {desc} |")
    for _app, module, cls_name in APPS:
        cls: type[ServiceSettings] = getattr(importlib.import_module(module), cls_name)
        prefix = _prefix(cls)
        notes = _comments(cls)
        for name, field in cls.model_fields.items():
            if name in SHARED_FIELDS or (name in base and name not in ("port", "host")):
                continue
            if name == "host":
                continue
            meaning = _describe(field, notes.get(name, ""))
            rows.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {meaning} |")
    return "\n".join(rows) + "\n"


def render_readme(text: str) -> str:
    """README text with the table between the markers replaced."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}{END}{tail}"


def main(argv: list[str]) -> int:
    if "--write" in argv:
        README.write_text(render_readme(README.read_text()))
        return 0
    sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
