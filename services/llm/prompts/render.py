"""Rendering a prompt version's message templates (Jinja), safely.

Rendering runs Jinja in ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``: templates
cannot reach Python internals (``__class__``...) nor mutate their inputs, and a variable the
caller did not give is an error (422 ``missing_variable``) rather than an empty string.
``range`` is capped and the output of one template is capped, so a template cannot make the
service render gigabytes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from libs.errors import ValidationFailed
from services.llm.prompts.schemas import VariablesSchema

MAX_RANGE = 1_000
MAX_OUTPUT_CHARS = 1_000_000


def _capped_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items in prompt templates")
    return r


_env = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_env.globals["range"] = _capped_range


_UNDEFINED = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)' is undefined")


@lru_cache(maxsize=2048)
def _compile(source: str) -> Template:
    return _env.from_string(source)


def check_templates(messages: list[dict[str, Any]]) -> list[str]:
    """Refuse templates that do not parse or that name private attributes; return their variables.

    The sandbox would refuse ``__class__`` and friends at render time anyway; refusing them
    when the version is created tells the author at once."""
    names: set[str] = set()
    for index, message in enumerate(messages):
        source = message["content"]
        where = f"messages.{index}.content"
        try:
            ast = _env.parse(source)
        except TemplateSyntaxError as exc:
            raise ValidationFailed(
                f"Template syntax error in {where} (line {exc.lineno}): {exc.message}",
                code="template_syntax_error",
                details=[{"field": where, "message": exc.message or "", "line": exc.lineno}],
            ) from exc
        for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
            attr: str | None = None
            if isinstance(node, nodes.Getattr):
                attr = node.attr
            elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
                attr = str(node.arg.value)
            elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
                first = node.args[0]
                attr = str(first.value) if isinstance(first, nodes.Const) else "?"
            if attr is not None and (attr.startswith("_") or attr == "?"):
                raise ValidationFailed(
                    f"Template in {where} accesses the private attribute {attr!r}",
                    code="unsafe_template",
                    details=[{"field": where, "message": "private attribute access"}],
                )
        names |= meta.find_undeclared_variables(ast)
    return sorted(names)


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def apply_schema(schema: dict[str, Any] | None, variables: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check required variables and types against a version's schema."""
    if not schema:
        return dict(variables)
    spec = VariablesSchema.model_validate(schema)
    out = dict(variables)
    for name, prop in spec.properties.items():
        if name not in out and prop.default is not None:
            out[name] = prop.default
    missing = [name for name in spec.required if name not in out]
    if missing:
        raise _missing(missing)
    for name, prop in spec.properties.items():
        if name in out and prop.type is not None:
            value = out[name]
            ok = isinstance(value, _TYPES[prop.type])
            if prop.type in ("number", "integer") and isinstance(value, bool):
                ok = False
            if not ok:
                raise ValidationFailed(
                    f"Variable '{name}' must be of type {prop.type}",
                    code="invalid_variable",
                    details=[{"field": f"variables.{name}", "message": f"expected {prop.type}"}],
                )
    return out


def _missing(names: list[str]) -> ValidationFailed:
    return ValidationFailed(
        f"Missing prompt variable{'s' if len(names) > 1 else ''}: {', '.join(names)}",
        code="missing_variable",
        details=[
            {"field": f"variables.{n}", "message": "required by the template", "variable": n}
            for n in names
        ],
    )


def render_messages(
    templates: list[dict[str, Any]],
    variables: dict[str, Any],
    schema: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Render a version's message templates into OpenAI chat messages."""
    values = apply_schema(schema, variables)
    rendered = []
    for index, message in enumerate(templates):
        template = _compile(message["content"])
        try:
            size = 0
            parts = []
            for part in template.generate(values):
                size += len(part)
                if size > MAX_OUTPUT_CHARS:
                    raise ValidationFailed(
                        f"A rendered message is longer than {MAX_OUTPUT_CHARS} characters",
                        code="template_output_too_large",
                    )
                parts.append(part)
        except SecurityError as exc:
            raise ValidationFailed(
                f"Template refused by the sandbox: {exc}", code="unsafe_template"
            ) from exc
        except UndefinedError as exc:
            # a top-level name ("'x' is undefined"); optional ones use `default` or `is defined`
            match = _UNDEFINED.fullmatch(exc.message or "")
            if match:
                raise _missing([match.group(1)]) from exc
            raise ValidationFailed(
                f"Prompt variable problem in messages.{index}: {exc.message}",
                code="missing_variable",
                details=[{"field": f"messages.{index}.content", "message": exc.message or ""}],
            ) from exc
        except TemplateError as exc:
            raise ValidationFailed(
                f"Template error in messages.{index}: {exc.message}", code="template_error"
            ) from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ValidationFailed(
                f"Template error in messages.{index}: {exc}", code="template_error"
            ) from exc
        out: dict[str, Any] = {"role": message["role"], "content": "".join(parts)}
        if message.get("name"):
            out["name"] = message["name"]
        rendered.append(out)
    return rendered
