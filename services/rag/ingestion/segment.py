"""Lexemes for PostgreSQL full-text search that understand Chinese as well as English.

The embedded PostgreSQL has no Chinese parser (and its default parser does not split Chinese
into words), so rag makes the lexemes itself, the same way for chunks at ingestion and for
queries: runs of CJK characters are segmented into words by jieba (``rjieba``: jieba-rs, its
dictionary compiled in; search mode, so a long word is indexed with its parts), other words
are lowercased and English ones stemmed (Snowball). The lexemes are written as a ``tsvector``
literal with positions (no parser, no dictionary: exactly these terms) and matched with a
``tsquery`` literal, so mixed Chinese/English text indexes and matches word by word.
"""

from __future__ import annotations

import re
import threading
from typing import Any

CJK = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\u3040-\u30ff\uac00-\ud7af]+"
)
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
MAX_POSITION = 16_383  # PostgreSQL's largest tsvector position
MAX_LEXEME_BYTES = 256
MAX_QUERY_TERMS = 64

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me more most my myself no nor not now of off on once only or other our
    ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself
    yourselves
    的 了 是 在 和 与 及 或 也 都 就 而 吗 呢 吧 啊 呀 之 其 这 那 这个 那个 一个
    我 你 他 她 它 我们 你们 他们 什么 怎么 如何 哪 哪些 为什么 是否 有 没有
    被 把 对 从 向 于 以 由 为 等 个""".split()
)


_local = threading.local()


def _stemmer() -> Any:
    # one per thread: a Snowball stemmer keeps its word in itself while it works (ingestion
    # segments chunks in worker threads)
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import snowballstemmer

        stemmer = _local.stemmer = snowballstemmer.stemmer("english")
    return stemmer


def jieba() -> Any:
    """rjieba, imported on first use (its dictionary is ~33 MiB)."""
    import rjieba

    return rjieba


def terms(text: str) -> list[str]:
    """The text's lexemes, in order (stopwords dropped)."""
    out: list[str] = []
    stem = _stemmer().stemWord
    pos = 0
    for m in CJK.finditer(text):
        out.extend(_latin(text[pos : m.start()], stem))
        out.extend(_cjk(m.group()))
        pos = m.end()
    out.extend(_latin(text[pos:], stem))
    return out


def _latin(text: str, stem: Any) -> list[str]:
    words = []
    for m in WORD.finditer(text):
        w = m.group().lower()
        if w in STOPWORDS:
            continue
        if w.isascii() and w.isalpha():
            w = stem(w)
        words.append(w)
    return words


def _cjk(run: str) -> list[str]:
    return [
        w
        for w in jieba().cut_for_search(run, True)
        if w.strip() and w not in STOPWORDS and WORD.fullmatch(w)
    ]


def _quote(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_literal(text: str) -> str:
    """A ``tsvector`` literal of the text's lexemes with their positions."""
    positions: dict[str, list[int]] = {}
    for i, term in enumerate(terms(text), start=1):
        if len(term.encode()) > MAX_LEXEME_BYTES:
            continue
        plist = positions.setdefault(term, [])
        if len(plist) < 256:
            plist.append(min(i, MAX_POSITION))
    return " ".join(
        _quote(t) + ":" + ",".join(str(p) for p in sorted(set(ps))) for t, ps in positions.items()
    )


def tsquery_literal(query: str) -> str | None:
    """A ``tsquery`` matching any of the query's lexemes (ranking prefers chunks with more of
    them); None when the query has none."""
    seen = list(dict.fromkeys(t for t in terms(query) if len(t.encode()) <= MAX_LEXEME_BYTES))
    if not seen:
        return None
    return " | ".join(_quote(t) for t in seen[:MAX_QUERY_TERMS])
