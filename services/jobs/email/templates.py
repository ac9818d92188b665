# ruff: noqa: RUF001  (Chinese templates use full-width punctuation)
"""Mail templates per kind, English and Chinese: a subject and a text body (Jinja, sandboxed),
and an HTML part built from the same text in one layout (autoescaped).

Variables: ``data`` (the kind's payload), ``subject`` (ids), ``org`` (the organization's name,
empty for an account notice), ``name`` (the recipient's display name), ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from libs.notify import KINDS

_TEXT = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined, trim_blocks=True)
_HTML = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)

# kind -> (subject, body); a kind without one uses "*"
EN: dict[str, tuple[str, str]] = {
    "*": ("{{ kind }}", "Something happened in {{ org or 'your account' }}: {{ kind }}."),
    "job.succeeded": (
        "Job {{ data.function }} succeeded",
        "Your job {{ data.function }} ({{ data.job_id }}) in {{ org }} finished successfully.",
    ),
    "job.failed": (
        "Job {{ data.function }} {{ data.status }}",
        "Your job {{ data.function }} ({{ data.job_id }}) in {{ org }} ended: {{ data.status }}."
        "{% if data.error %}\n\nError: {{ data.error }}{% endif %}",
    ),
    "batch.completed": (
        "Batch {{ data.batch_id }} completed",
        "Your batch {{ data.batch_id }} in {{ org }} completed: {{ data.completed }} of "
        "{{ data.total }} requests succeeded, {{ data.failed }} failed.",
    ),
    "batch.failed": (
        "Batch {{ data.batch_id }} {{ data.status }}",
        "Your batch {{ data.batch_id }} in {{ org }} ended: {{ data.status }}.",
    ),
    "vector_store.file.failed": (
        "A file could not be ingested",
        "The file {{ data.filename or data.file_id }} added to vector store "
        "{{ data.vector_store_id }} in {{ org }} could not be ingested: {{ data.error_code }}"
        "{% if data.error_message %} ({{ data.error_message }}){% endif %}.",
    ),
    "api_key.expiring": (
        "API key {{ data.name }} expires soon",
        "The API key {{ data.name }} ({{ data.prefix }}...) of {{ org }} expires at "
        "{{ data.expires_at }}. Create a new one before then.",
    ),
    "security.new_sign_in": (
        "New sign-in to your account",
        "Your aistack account was signed in to from a new device ({{ data.user_agent or "
        "'unknown device' }}{% if data.ip %}, {{ data.ip }}{% endif %}) at "
        "{{ data.signed_in_at }}.\n\nIf it was not you, change your password now.",
    ),
    "org.member.invited": (
        "{{ data.email }} was invited to {{ org }}",
        "{{ data.email }} was invited to {{ org }} as {{ data.role }}.",
    ),
    "org.member.removed": (
        "A member left {{ org }}",
        "{{ data.email or data.user_id }} is no longer a member of {{ org }}.",
    ),
    "webhook.endpoint_disabled": (
        "Webhook endpoint disabled",
        "The webhook endpoint {{ data.url }} of {{ org }} failed since {{ data.failing_since }} "
        "and was disabled. Fix it, then enable it again.",
    ),
}

ZH: dict[str, tuple[str, str]] = {
    "*": ("{{ kind }}", "{{ org or '您的账户' }}发生了一件事：{{ kind }}。"),
    "job.succeeded": (
        "任务 {{ data.function }} 已成功",
        "您在 {{ org }} 的任务 {{ data.function }}（{{ data.job_id }}）已成功完成。",
    ),
    "job.failed": (
        "任务 {{ data.function }} 未成功（{{ data.status }}）",
        "您在 {{ org }} 的任务 {{ data.function }}（{{ data.job_id }}）已结束：{{ data.status }}。"
        "{% if data.error %}\n\n错误：{{ data.error }}{% endif %}",
    ),
    "batch.completed": (
        "批处理 {{ data.batch_id }} 已完成",
        "您在 {{ org }} 的批处理 {{ data.batch_id }} 已完成：{{ data.total }} 个请求中 "
        "{{ data.completed }} 个成功，{{ data.failed }} 个失败。",
    ),
    "batch.failed": (
        "批处理 {{ data.batch_id }} 未完成（{{ data.status }}）",
        "您在 {{ org }} 的批处理 {{ data.batch_id }} 已结束：{{ data.status }}。",
    ),
    "vector_store.file.failed": (
        "文件导入失败",
        "{{ org }} 中添加到向量库 {{ data.vector_store_id }} 的文件 "
        "{{ data.filename or data.file_id }} 无法导入：{{ data.error_code }}。",
    ),
    "api_key.expiring": (
        "API 密钥 {{ data.name }} 即将过期",
        "{{ org }} 的 API 密钥 {{ data.name }}（{{ data.prefix }}...）将于 {{ data.expires_at }} "
        "过期，请在此之前创建新的密钥。",
    ),
    "security.new_sign_in": (
        "您的账户有新的登录",
        "您的 aistack 账户于 {{ data.signed_in_at }} 从新设备登录（{{ data.user_agent or "
        "'未知设备' }}）。\n\n如果不是您本人，请立即修改密码。",
    ),
    "org.member.invited": (
        "{{ data.email }} 已受邀加入 {{ org }}",
        "{{ data.email }} 已受邀以 {{ data.role }} 身份加入 {{ org }}。",
    ),
    "org.member.removed": (
        "有成员离开了 {{ org }}",
        "{{ data.email or data.user_id }} 已不再是 {{ org }} 的成员。",
    ),
    "webhook.endpoint_disabled": (
        "Webhook 端点已停用",
        "{{ org }} 的 webhook 端点 {{ data.url }} 自 {{ data.failing_since }} 起持续失败，"
        "已被停用。修复后请重新启用。",
    ),
}

LANGUAGES = {"en": EN, "zh": ZH}
FOOTER = {
    "en": ("You get this mail for {{ kind }}.", "Unsubscribe from these mails: {{ url }}"),
    "zh": ("您收到此邮件是因为 {{ kind }} 通知。", "退订此类邮件：{{ url }}"),
}
DIGEST = {
    "en": ("Your aistack digest: {{ n }} notifications", "What happened since the last digest:"),
    "zh": ("您的 aistack 摘要：{{ n }} 条通知", "自上次摘要以来："),
}

_LAYOUT = _HTML.from_string(
    '<!doctype html><html><body style="font-family:sans-serif">'
    "{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}"
    '{% if unsubscribe %}<p style="color:#666;font-size:12px">{{ footer }} '
    '<a href="{{ unsubscribe }}">{{ unsubscribe_label }}</a></p>{% endif %}'
    "</body></html>"
)


@dataclass
class Rendered:
    subject: str
    text: str
    html: str


def _lang(language: str) -> str:
    return language if language in LANGUAGES else "en"


def line(kind: str, language: str, ctx: dict[str, Any]) -> tuple[str, str]:
    """The subject and text body of one notification."""
    table = LANGUAGES[_lang(language)]
    subject_t, body_t = table.get(kind, table["*"])
    return _TEXT.from_string(subject_t).render(**ctx), _TEXT.from_string(body_t).render(**ctx)


def _finish(
    language: str, subject: str, paragraphs: list[str], kind: str, unsubscribe: str | None
) -> Rendered:
    lang = _lang(language)
    text = "\n\n".join(paragraphs)
    footer = _TEXT.from_string(FOOTER[lang][0]).render(kind=kind)
    if unsubscribe:
        text += (
            "\n\n-- \n" + footer + "\n" + _TEXT.from_string(FOOTER[lang][1]).render(url=unsubscribe)
        )
    html = _LAYOUT.render(
        paragraphs=[p for part in paragraphs for p in part.split("\n\n")],
        unsubscribe=unsubscribe,
        footer=footer,
        unsubscribe_label="Unsubscribe" if lang == "en" else "退订",
    )
    return Rendered(subject=subject.replace("\n", " ")[:200], text=text + "\n", html=html)


def render(
    kind: str,
    language: str,
    *,
    data: dict[str, Any],
    subject_ids: dict[str, str],
    org: str,
    name: str,
    unsubscribe: str | None,
) -> Rendered:
    """One notification's mail."""
    ctx = {"data": data, "subject": subject_ids, "org": org, "name": name, "kind": kind}
    subject, body = line(kind, language, ctx)
    return _finish(language, subject, [body], kind, unsubscribe)


def render_digest(
    language: str, items: list[tuple[str, dict[str, Any]]], unsubscribe: str | None
) -> Rendered:
    """A digest of ``items`` (kind, template context)."""
    lang = _lang(language)
    subject = _TEXT.from_string(DIGEST[lang][0]).render(n=len(items))
    lines = [DIGEST[lang][1]]
    for kind, ctx in items:
        title, body = line(kind, lang, ctx)
        lines.append(f"{title}\n{body}")
    return _finish(lang, subject, lines, "digest", unsubscribe)


assert all(k == "*" or k in KINDS for lang in LANGUAGES.values() for k in lang)
