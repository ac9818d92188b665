"""Chunking: real token bounds, sentence ends (Latin and Chinese), tables cut between rows with
their header, heading paths, overlap of whole sentences."""

from __future__ import annotations

from services.rag.ingestion.chunk import chunk, sentences
from services.rag.ingestion.parse import Block, parse
from services.rag.ingestion.tokens import count


def test_sentences_end_at_latin_and_chinese_marks() -> None:
    assert sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]
    assert sentences("第一句。第二句！第三句？第四句；最后") == [
        "第一句。",
        "第二句！",
        "第三句？",
        "第四句；",
        "最后",
    ]
    assert sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_chunks_stay_within_max_tokens_and_cut_at_sentence_ends() -> None:
    text = " ".join(
        f"Sentence number {i} is about topic {i % 5} and nothing else." for i in range(200)
    )
    drafts = chunk([Block("text", (), text=text)], 100, 30)
    assert len(drafts) > 5
    for d in drafts:
        assert d.tokens == count(d.text) <= 100
        assert d.text.startswith("Sentence number") and d.text.endswith("else.")
    # consecutive chunks overlap by whole sentences, at most 30 tokens of them
    first, second = drafts[0].text, drafts[1].text
    shared = [s for s in sentences(second) if s in sentences(first)]
    assert shared and count(" ".join(shared)) <= 30


def test_chinese_text_is_chunked_at_its_sentence_ends() -> None:
    text = "".join(f"这是第{i}个句子，它讲的是第{i % 3}个主题。" for i in range(120))
    drafts = chunk([Block("text", (), text=text)], 100, 0)
    assert len(drafts) > 3
    for d in drafts:
        assert d.tokens <= 100 and d.text.endswith("。")
        assert " " not in d.text  # Chinese sentences are joined without spaces


def test_tables_are_cut_between_rows_with_their_header() -> None:
    md = "# Prices\n\n| City | Per diem |\n|---|---|\n" + "".join(
        f"| City number {i} | {i * 10} euros |\n" for i in range(80)
    )
    drafts = chunk(parse("t.md", md.encode()), 120, 20)
    assert len(drafts) > 3
    for d in drafts:
        lines = [ln for ln in d.text.split("\n") if ln.strip() and not ln.startswith("#")]
        assert lines[0] == "| City | Per diem |", d.text[:80]
        assert all(ln.startswith("| ") and ln.endswith(" |") for ln in lines)  # whole rows
        assert d.headings == ("Prices",)


def test_a_heading_path_follows_the_sections() -> None:
    md = (
        "# Handbook\n\n## Leave\n\n"
        + " ".join(f"Leave rule {i} applies to everyone." for i in range(40))
        + "\n\n## Travel\n\n"
        + " ".join(f"Travel rule {i} applies to trips." for i in range(40))
    )
    drafts = chunk(parse("h.md", md.encode()), 150, 0)
    paths = {d.headings for d in drafts}
    assert ("Handbook", "Leave") in paths and ("Handbook", "Travel") in paths
    # the section's heading is in the chunk where it begins, and what follows is under it
    at = next(i for i, d in enumerate(drafts) if "## Travel" in d.text)
    assert all(d.headings == ("Handbook", "Travel") for d in drafts[at + 1 :])
