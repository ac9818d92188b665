"""Blocks to chunks of at most ``max_tokens`` real tokens, overlapping by up to ``overlap``.

OpenAI's ``static`` strategy (``auto`` is 800 / 400), made structure-aware: text is cut at
sentence ends (Latin ``. ! ?`` and Chinese ``。！？；``), never mid-sentence unless one
sentence alone is longer than a chunk; a table is cut between rows, never inside one, and a
chunk that starts inside a table starts with its header row; a new section (a heading) starts
a new chunk once the current one is half full; each chunk knows the heading path it starts
under. The overlap is made of whole sentences or rows from the end of the previous chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.rag.ingestion.parse import Block
from services.rag.ingestion.tokens import count

SENTENCE_END = re.compile(r"""[.!?]+["'”’)\]]*\s+|[。！？；]+["”’」』）]*\s*|\n\s*""")


@dataclass
class Draft:
    text: str
    headings: tuple[str, ...]
    tokens: int


@dataclass
class _Unit:
    text: str
    tokens: int
    sep: str  # joins it to the unit before it in the same chunk
    headings: tuple[str, ...]
    header: str | None = None  # a table row's header row
    section: bool = False  # a heading: a place to start a new chunk


def sentences(text: str) -> list[str]:
    out, pos = [], 0
    for m in SENTENCE_END.finditer(text):
        piece = text[pos : m.end()].strip()
        if piece:
            out.append(piece)
        pos = m.end()
    tail = text[pos:].strip()
    if tail:
        out.append(tail)
    return out


def _cjk_join(prev: str, nxt: str) -> str:
    # Chinese and Japanese sentences follow one another without a space
    return "" if prev and ord(prev[-1]) > 0x2E80 and nxt and ord(nxt[0]) > 0x2E80 else " "


def _split_long(text: str, max_tokens: int) -> list[str]:
    """A piece of text too long for one chunk, cut at word (or character) boundaries."""
    pieces: list[str] = []
    rest = text
    while rest:
        n = count(rest)
        if n <= max_tokens:
            pieces.append(rest)
            break
        cut = max(1, int(len(rest) * max_tokens / n * 0.9))
        while cut > 1 and count(rest[:cut]) > max_tokens:
            cut = int(cut * 0.85)
        space = rest.rfind(" ", cut // 2, cut)
        if space > 0:
            cut = space
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    return [p for p in pieces if p]


def _units(blocks: list[Block], max_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    for block in blocks:
        first = True
        if block.kind == "table":
            header = block.rows[0] if len(block.rows) > 1 else None
            for k, row in enumerate(block.rows):
                for piece in (
                    _split_long(row, max_tokens // 2) if count(row) > max_tokens // 2 else [row]
                ):
                    units.append(
                        _Unit(
                            piece,
                            count(piece),
                            "\n\n" if first else "\n",
                            block.headings,
                            header if k else None,
                        )
                    )
                    first = False
            continue
        parts = [block.text] if block.heading else sentences(block.text)
        prev = ""
        for s in parts:
            for piece in _split_long(s, max_tokens) if count(s) > max_tokens else [s]:
                sep = "\n\n" if first else _cjk_join(prev, piece)
                units.append(
                    _Unit(piece, count(piece), sep, block.headings, section=block.heading and first)
                )
                first, prev = False, piece
    return units


def chunk(blocks: list[Block], max_tokens: int, overlap: int) -> list[Draft]:
    """Chunks of the blocks (see the module docstring)."""
    units = _units(blocks, max_tokens)
    drafts: list[Draft] = []
    current: list[_Unit] = []
    size = 0

    def text_of(us: list[_Unit]) -> str:
        return "".join((u.sep if i else "") + u.text for i, u in enumerate(us))

    def flush(keep_overlap: bool) -> list[_Unit]:
        nonlocal size
        body = list(current)
        text = text_of(body)
        n = count(text)
        while n > max_tokens and len(body) > 1:  # separators added a token or two
            body.pop()
            text = text_of(body)
            n = count(text)
        drafts.append(Draft(text, body[0].headings, n))
        rest = current[len(body) :]
        tail: list[_Unit] = []
        if keep_overlap and overlap:
            used = 0
            for u in reversed(body):
                if used + u.tokens > overlap or len(tail) + 1 >= len(body):
                    break
                tail.insert(0, u)
                used += u.tokens
        return tail + rest

    for u in units:
        if current and u.section and size >= max_tokens // 2:
            current = flush(keep_overlap=False)
            size = sum(x.tokens for x in current)
        if current and size + u.tokens + 1 > max_tokens:
            current = flush(keep_overlap=True)
            size = sum(x.tokens for x in current)
            if u.header is not None:
                # a chunk starting inside a table starts with the table's header row
                head = _Unit(u.header, count(u.header), "\n\n", u.headings)
                if size + head.tokens + u.tokens + 2 > max_tokens:
                    current, size = [], 0
                if not current or current[0].header == u.header:
                    current = [head, *current]
                else:
                    current.append(head)
                size += head.tokens + 1
        current.append(u)
        size += u.tokens + 1
    if current:
        flush(keep_overlap=False)
    return [d for d in drafts if d.text.strip()]
