"""Files to text blocks: each format read by a well-kept library, headings and tables kept.

A parsed document is a list of :class:`Block`: text (a paragraph, a list, code) or a table
(its rows, the first being the header), each under the heading path it appears in. Formats:
plain text (and source code), Markdown (markdown-it-py), HTML (BeautifulSoup), PDF
(pdfplumber: text lines and tables by position on the page), DOCX (python-docx: paragraphs
with their heading styles, tables in body order), CSV (the standard library's csv) and JSON
(orjson; JSON Lines too). What cannot be read raises :class:`ParseError` with OpenAI's
``last_error`` code and a message a person can act on.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import orjson

Kind = Literal["text", "table"]

TEXT_EXTENSIONS = frozenset(
    """txt text log rst tex py js ts tsx jsx go java c h cpp hpp cc cs rb php sh bash zsh css
    scss sql yaml yml toml ini cfg xml kt swift rs scala r m pl lua""".split()
)
FORMATS = {
    "md": "markdown",
    "markdown": "markdown",
    "html": "html",
    "htm": "html",
    "xhtml": "html",
    "pdf": "pdf",
    "docx": "docx",
    "csv": "csv",
    "tsv": "csv",
    "json": "json",
    "jsonl": "json",
    "ndjson": "json",
}
SUPPORTED = "txt, md, html, pdf, docx, csv, json and source code"


class ParseError(Exception):
    """The file cannot be ingested: ``code`` is OpenAI's (unsupported_file, invalid_file)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Block:
    kind: Kind
    headings: tuple[str, ...]
    # text: its text; table: one string per row, the header first
    text: str = ""
    rows: list[str] = field(default_factory=list)
    # a heading line itself (kept as text so its words are searchable)
    heading: bool = False


def detect(filename: str, raw: bytes) -> str:
    """The format to read ``raw`` as (by extension, else by content)."""
    ext = PurePosixPath(filename.lower()).suffix.lstrip(".")
    if ext in FORMATS:
        return FORMATS[ext]
    if ext in TEXT_EXTENSIONS:
        return "text"
    if raw.startswith(b"%PDF-"):
        return "pdf"
    if raw.startswith(b"PK\x03\x04"):
        if b"word/" in raw[:4096]:
            return "docx"
        raise ParseError(
            "unsupported_file",
            f"Archives and Office files other than DOCX are "
            f"not supported (supported: {SUPPORTED}).",
        )
    if ext and ext != "dat" and _looks_binary(raw):
        raise ParseError(
            "unsupported_file",
            f"Files of type .{ext} are not supported (supported: {SUPPORTED}).",
        )
    if _looks_binary(raw):
        raise ParseError(
            "unsupported_file", f"This file is not text nor a supported document ({SUPPORTED})."
        )
    return "text"


def _looks_binary(raw: bytes) -> bool:
    head = raw[:8192]
    return b"\x00" in head or (bool(head) and _decode_or_none(head) is None)


def _decode_or_none(raw: bytes) -> str | None:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a sample cut inside a multi-byte character is still UTF-8
        if exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[: exc.start].decode("utf-8")
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    return None if best is None else str(best)


def decode(raw: bytes) -> str:
    text = _decode_or_none(raw)
    if text is None or "\x00" in text:
        raise ParseError("invalid_file", "The file's text encoding could not be recognised.")
    return text


def parse(filename: str, raw: bytes) -> list[Block]:
    """Read ``raw`` into blocks; raises :class:`ParseError`."""
    fmt = detect(filename, raw)
    reader = {
        "text": _text,
        "markdown": _markdown,
        "html": _html,
        "pdf": _pdf,
        "docx": _docx,
        "csv": _csv,
        "json": _json,
    }[fmt]
    blocks = [b for b in reader(raw) if (b.text.strip() if b.kind == "text" else b.rows)]
    if not blocks:
        what = "PDF" if fmt == "pdf" else "file"
        hint = (
            " (a scanned PDF has only images: text is not recognised in them)"
            if fmt == "pdf"
            else ""
        )
        raise ParseError("invalid_file", f"The {what} contains no text{hint}.")
    return blocks


# --- plain text


def _paragraphs(text: str, headings: tuple[str, ...] = ()) -> list[Block]:
    return [
        Block("text", headings, text=p.strip())
        for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
        if p.strip()
    ]


def _text(raw: bytes) -> list[Block]:
    return _paragraphs(decode(raw))


# --- markdown


def _markdown(raw: bytes) -> list[Block]:
    from markdown_it import MarkdownIt

    source = decode(raw).replace("\r\n", "\n")
    lines = source.split("\n")
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(source)
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.level != 0 or tok.map is None:
            i += 1
            continue
        start, end = tok.map
        if tok.type == "heading_open":
            level = int(tok.tag[1])
            title = tokens[i + 1].content.strip()
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, title)]
            blocks.append(
                Block(
                    "text",
                    tuple(t for _, t in stack),
                    text="\n".join(lines[start:end]).strip(),
                    heading=True,
                )
            )
        elif tok.type == "table_open":
            rows = [ln for ln in lines[start:end] if ln.strip()]
            # the header row, then the body rows (the |---| line is dropped: not content)
            body = [r for k, r in enumerate(rows) if k != 1]
            blocks.append(Block("table", tuple(t for _, t in stack), rows=body))
        else:
            text = "\n".join(lines[start:end]).strip()
            if text:
                blocks.append(Block("text", tuple(t for _, t in stack), text=text))
        # skip to the end of this top-level block
        depth: int = tok.nesting
        i += 1
        while depth > 0 and i < len(tokens):
            depth += tokens[i].nesting if tokens[i].level == 0 else 0
            i += 1
    return blocks


# --- HTML

_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_LEAF_BLOCKS = frozenset(
    {"p", "pre", "blockquote", "li", "dt", "dd", "figcaption", "caption", "address"}
)
_SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg", "nav", "footer"})


def _html(raw: bytes) -> list[Block]:
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(decode(raw), "html.parser")
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []

    def path() -> tuple[str, ...]:
        return tuple(t for _, t in stack)

    def walk(node: Tag) -> None:
        nonlocal stack
        loose: list[str] = []

        def flush() -> None:
            text = " ".join(loose).strip()
            if text:
                blocks.append(Block("text", path(), text=text))
            loose.clear()

        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString and child.strip():
                    loose.append(" ".join(child.split()))
                continue
            if not isinstance(child, Tag) or child.name in _SKIP:
                continue
            if child.name in _HEADINGS:
                flush()
                level = _HEADINGS[child.name]
                title = child.get_text(" ", strip=True)
                if title:
                    stack = [(lv, t) for lv, t in stack if lv < level] + [(level, title)]
                    blocks.append(Block("text", path(), text=title, heading=True))
            elif child.name == "table":
                flush()
                rows = []
                for tr in child.find_all("tr"):
                    cells = [c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])]
                    if any(cells):
                        rows.append(" | ".join(cells))
                if rows:
                    blocks.append(Block("table", path(), rows=rows))
            elif child.name in _LEAF_BLOCKS:
                flush()
                text = child.get_text(" ", strip=True) if child.name != "pre" else child.get_text()
                if text.strip():
                    blocks.append(Block("text", path(), text=text.strip()))
            elif child.name in ("br",):
                continue
            elif child.name in (
                "a",
                "span",
                "b",
                "i",
                "em",
                "strong",
                "code",
                "small",
                "sub",
                "sup",
                "u",
                "mark",
                "abbr",
                "time",
                "q",
                "cite",
            ):
                text = child.get_text(" ", strip=True)
                if text:
                    loose.append(text)
            else:
                flush()
                walk(child)
        flush()

    walk(soup.body or soup)
    return blocks


# --- PDF


def _pdf(raw: bytes) -> list[Block]:
    import pdfplumber
    from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect
    from pdfplumber.utils.exceptions import PdfminerException

    try:
        pdf = pdfplumber.open(io.BytesIO(raw))
    except (PDFPasswordIncorrect, PDFEncryptionError) as exc:
        raise _encrypted() from exc
    except PdfminerException as exc:
        inner = exc.args[0] if exc.args else exc
        if (
            isinstance(inner, PDFPasswordIncorrect | PDFEncryptionError)
            or "password" in str(inner).lower()
        ):
            raise _encrypted() from exc
        raise ParseError(
            "invalid_file", f"The PDF could not be read (damaged or not a PDF): {inner}"
        ) from exc
    except Exception as exc:
        raise ParseError(
            "invalid_file", f"The PDF could not be read (damaged or not a PDF): {exc}"
        ) from exc
    blocks: list[Block] = []
    try:
        with pdf:
            for page in pdf.pages:
                blocks.extend(_pdf_page(page))
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError("invalid_file", f"The PDF could not be read (damaged): {exc}") from exc
    return blocks


def _encrypted() -> ParseError:
    return ParseError(
        "invalid_file",
        "The PDF is encrypted (password-protected): upload a copy without a password.",
    )


def _pdf_page(page: Any) -> list[Block]:
    tables = page.find_tables()
    placed: list[tuple[float, Block]] = []
    boxes = [t.bbox for t in tables]
    for t in tables:
        rows = [
            " | ".join((c or "").replace("\n", " ").strip() for c in row) for row in t.extract()
        ]
        rows = [r for r in rows if r.strip(" |")]
        if rows:
            placed.append((t.bbox[1], Block("table", (), rows=rows)))

    def outside(obj: dict[str, Any]) -> bool:
        x = (obj.get("x0", 0) + obj.get("x1", 0)) / 2
        y = (obj.get("top", 0) + obj.get("bottom", 0)) / 2
        return not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)

    text_page = page.filter(outside) if boxes else page
    para: list[str] = []
    para_top: float | None = None
    last_bottom: float | None = None
    for line in text_page.extract_text_lines(return_chars=False):
        gap = line["top"] - last_bottom if last_bottom is not None else 0
        if para and gap > 0.8 * (line["bottom"] - line["top"]):
            placed.append((para_top or 0, Block("text", (), text="\n".join(para))))
            para, para_top = [], None
        if para_top is None:
            para_top = line["top"]
        para.append(line["text"])
        last_bottom = line["bottom"]
    if para:
        placed.append((para_top or 0, Block("text", (), text="\n".join(para))))
    placed.sort(key=lambda p: p[0])
    return [b for _, b in placed]


# --- DOCX


def _docx(raw: bytes) -> list[Block]:
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        document = docx.Document(io.BytesIO(raw))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ParseError(
            "invalid_file", "The DOCX file is damaged or is not a Word document."
        ) from exc
    except Exception as exc:
        raise ParseError("invalid_file", f"The DOCX file could not be read: {exc}") from exc
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    body = document.element.body
    for el in body.iterchildren():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "p":
            p = Paragraph(el, document)
            text = p.text.strip()
            if not text:
                continue
            style = (p.style.name if p.style is not None else "") or ""
            level = _heading_level(style)
            if level is not None:
                stack = [(lv, t) for lv, t in stack if lv < level] + [(level, text)]
                blocks.append(Block("text", tuple(t for _, t in stack), text=text, heading=True))
            else:
                blocks.append(Block("text", tuple(t for _, t in stack), text=text))
        elif tag == "tbl":
            table = Table(el, document)
            rows = []
            for row in table.rows:
                cells: list[str] = []
                for cell in row.cells:
                    t = cell.text.replace("\n", " ").strip()
                    if not cells or cells[-1] != t:  # merged cells repeat themselves
                        cells.append(t)
                if any(cells):
                    rows.append(" | ".join(cells))
            if rows:
                blocks.append(Block("table", tuple(t for _, t in stack), rows=rows))
    return blocks


def _heading_level(style: str) -> int | None:
    if style == "Title":
        return 1
    m = re.fullmatch(r"Heading (\d)", style)
    return int(m.group(1)) if m else None


# --- CSV and JSON


def _csv(raw: bytes) -> list[Block]:
    text = decode(raw)
    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [
            " | ".join(c.strip() for c in row) for row in csv.reader(io.StringIO(text), dialect)
        ]
    except csv.Error as exc:
        raise ParseError("invalid_file", f"The CSV file could not be read: {exc}") from exc
    rows = [r for r in rows if r.strip(" |")]
    return [Block("table", (), rows=rows)] if rows else []


def _json(raw: bytes) -> list[Block]:
    text = decode(raw)
    try:
        values = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        try:  # JSON Lines
            values = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise ParseError("invalid_file", f"The JSON file is not valid JSON: {exc}") from exc
    items: list[Any] = []
    for v in values:
        items.extend(v if isinstance(v, list) else [v])
    return [Block("text", (), text="\n".join(_flatten(item, ""))) for item in items]


def _flatten(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            out.extend(_flatten(v, f"{prefix}[{i}]"))
        return out
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    return [f"{prefix}: {shown}" if prefix else str(shown)]
