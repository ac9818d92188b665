"""How file_search turns rag's results into the model's sources and the answer's citations
(the whole flow runs in test_file_search.py)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.errors import BadRequest
from services.llm.responses.file_search import (
    FileSearchTool,
    SearchOutcome,
    search_queries,
    searches,
    split_tools,
)
from services.llm.responses.schemas import ResponsesRequest


def hit(file_id: str, filename: str, text: str) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "filename": filename,
        "score": 0.5,
        "attributes": {},
        "content": [{"type": "text", "text": text}],
    }


RESULTS = [
    hit("file-a", "a.pdf", "Hotels: 150 euros."),
    hit("file-b", "b.docx", "Laptops on day one."),
    hit("file-a", "a.pdf", "Meals: 40 euros."),
]


def outcome() -> SearchOutcome:
    return SearchOutcome("fs_1", ["q"], list(RESULTS))


def test_sources_are_numbered_and_markers_become_citations() -> None:
    found = outcome()
    prompt = found.prompt("How much for a hotel?", 10_000)
    assert prompt is not None
    assert "[1] (a.pdf) Hotels: 150 euros." in prompt and "[3] (a.pdf) Meals" in prompt
    assert prompt.endswith("Question: How much for a hotel?")
    text = "Hotels cost 150 [1], laptops come first [2]; [9] is no source."
    assert found.annotations(text) == [
        {
            "type": "file_citation",
            "file_id": "file-a",
            "filename": "a.pdf",
            "index": text.index("[1]"),
        },
        {
            "type": "file_citation",
            "file_id": "file-b",
            "filename": "b.docx",
            "index": text.index("[2]"),
        },
    ]


def test_without_markers_the_files_given_are_cited_best_first() -> None:
    found = outcome()
    found.prompt("q", 10_000)
    text = "Hotels cost 150 euros."
    cited = found.annotations(text)
    assert [(a["file_id"], a["index"]) for a in cited] == [
        ("file-a", len(text)),
        ("file-b", len(text)),
    ]
    assert found.annotations("") == []


def test_only_what_fits_is_given_and_cited() -> None:
    found = outcome()
    prompt = found.prompt("q", 40)  # room for the first source only
    assert prompt is not None and "[2]" not in prompt
    assert [a["file_id"] for a in found.annotations("Hotels.")] == ["file-a"]
    tiny = outcome()
    prompt = tiny.prompt("q", 10)  # the first source is cut rather than left out
    assert prompt is not None and "Sources:\n[1] (a.p\n" in prompt
    assert SearchOutcome("fs_2", ["q"], []).prompt("q", 1000) is None


def test_the_tool_in_rags_terms() -> None:
    tool, rest = split_tools(
        [
            {"type": "function", "name": "f"},
            {
                "type": "file_search",
                "vector_store_ids": ["vs_1"],
                "max_num_results": 3,
                "filters": {"type": "eq", "key": "lang", "value": "zh"},
                "ranking_options": {
                    "score_threshold": 0.2,
                    "hybrid_search": {"embedding_weight": 2, "text_weight": 1},
                },
            },
        ]
    )
    assert rest == [{"type": "function", "name": "f"}]
    assert tool is not None
    assert tool.search_body("q") == {
        "vector_store_ids": ["vs_1"],
        "query": "q",
        "max_num_results": 3,
        "filters": {"type": "eq", "key": "lang", "value": "zh"},
        "vector_weight": 2,
        "fulltext_weight": 1,
        "ranking_options": {"score_threshold": 0.2},
    }
    assert split_tools(None) == (None, None)


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"vector_store_ids": "vs_1"}, "tools[0].vector_store_ids"),
        ({"vector_store_ids": []}, "tools[0].vector_store_ids"),
        ({"vector_store_ids": ["vs_1"], "max_num_results": 0}, "tools[0].max_num_results"),
        ({"vector_store_ids": ["vs_1"], "max_num_results": True}, "tools[0].max_num_results"),
        ({"vector_store_ids": ["vs_1"], "filters": "lang"}, "tools[0].filters"),
    ],
)
def test_bad_tools_name_their_field(tool: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        FileSearchTool.parse({"type": "file_search", **tool}, 0)
    assert info.value.details[0]["field"] == param


def test_one_file_search_tool_only() -> None:
    tool = {"type": "file_search", "vector_store_ids": ["vs_1"]}
    with pytest.raises(BadRequest) as info:
        split_tools([tool, tool])
    assert info.value.details[0]["field"] == "tools[1]"


FS = {"type": "file_search", "vector_store_ids": ["vs_1"]}
FN = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("extra", "searched"),
    [
        ({}, True),
        ({"tool_choice": "auto"}, True),
        ({"tool_choice": "required"}, True),
        ({"tool_choice": {"type": "file_search"}}, True),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [FS]}}, True),
        ({"max_tool_calls": 1}, True),
        ({"tool_choice": "none"}, False),
        ({"max_tool_calls": 0}, False),
        ({"tool_choice": {"type": "function", "name": "lookup"}}, False),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [FN]}}, False),
    ],
)
def test_tool_choice_and_max_tool_calls_decide_the_search(
    extra: dict[str, Any], searched: bool
) -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "q", "tools": [FS, FN], **extra})
    assert searches(body) is searched


def test_a_short_follow_up_is_searched_with_the_message_before_it() -> None:
    earlier = [
        {"role": "user", "content": "How much is a hotel night reimbursed?"},
        {"role": "assistant", "content": "150 euros [1]."},
    ]
    assert search_queries("And meals?", earlier) == [
        "And meals?",
        "How much is a hotel night reimbursed?",
    ]
    assert search_queries("那餐补呢？", earlier)[1] == "How much is a hotel night reimbursed?"  # noqa: RUF001
    long = "Which documents do I need to hand in for the reimbursement of a hotel night?"
    assert search_queries(long, earlier) == [long]  # a question of its own
    assert search_queries("And meals?", []) == ["And meals?"]  # nothing before it
