"""``rewrite_query``: a natural-language question rewritten into a search query.

OpenAI rewrites the query with a model and returns the rewritten text in ``search_query``.
aistack's rewrite is deterministic (no model call: no added latency, no cost, the same query
always gives the same search): the question's words are kept in their order and what only
makes it a question is dropped — question words, stopwords, politeness ("please", "tell
me"), punctuation. Chinese runs are segmented with jieba, as full-text search segments them
(``segment``), and their particles and question words (什么, 怎么, 吗, 呢...) are dropped the
same way. Words are not stemmed (the rewritten text is embedded as well as matched). A query
that is nothing but such words is searched as given.

"What is the return policy?" → "return policy"; "退货政策是什么？" → "退货政策".
"""

from __future__ import annotations

from services.rag.ingestion.segment import CJK, STOPWORDS, WORD, jieba

# beyond full text's stopwords: what asks rather than names (English and Chinese)
ASKING = frozenset(
    """please tell explain show give find know let want need us many much i'd i'm what's how's
    where's who's which's there's can't don't does doesn't
    请 请问 告诉 一下 解释 说明 介绍 想 知道 想知道 能 能否 可以 可否
    吧 么 嘛 是不是 有没有 哪里 哪儿 谁 多少 几""".split()
)
DROP = STOPWORDS | ASKING


def rewrite(query: str) -> str:
    """The search query for ``query`` (itself, stripped, when nothing would be left)."""
    parts: list[str] = []  # words, CJK ones marked by a leading NUL to join them unspaced
    pos = 0
    for m in CJK.finditer(query):
        parts.extend(_latin(query[pos : m.start()]))
        parts.extend(
            "\0" + w
            for w in jieba().cut(m.group(), False)
            if w.strip() and w not in DROP and WORD.fullmatch(w)
        )
        pos = m.end()
    parts.extend(_latin(query[pos:]))
    out = ""
    for i, part in enumerate(parts):
        cjk = part.startswith("\0")
        if i and not (cjk and parts[i - 1].startswith("\0")):
            out += " "
        out += part.lstrip("\0")
    return out or query.strip()


def _latin(text: str) -> list[str]:
    return [m.group() for m in WORD.finditer(text) if m.group().lower() not in DROP]
