"""rewrite_query's rewrite: the question's content words, in order, Chinese segmented."""

from __future__ import annotations

import pytest

from services.rag.search.rewrite import rewrite


@pytest.mark.parametrize(
    ("query", "rewritten"),
    [
        ("What is the return policy?", "return policy"),
        (
            "Can you please tell me how many vacation days employees get?",
            "vacation days employees get",
        ),
        ("退货政策是什么？", "退货政策"),
        ("请问年假有多少天？", "年假天"),
        ("年假 policy 是什么?", "年假 policy"),  # mixed: CJK words unspaced, others spaced
        ("Wie viele Urlaubstage?", "Wie viele Urlaubstage"),  # other languages: punctuation only
        ("What is it?", "What is it?"),  # nothing left: searched as given
        ("  the  ", "the"),
    ],
)
def test_rewrite(query: str, rewritten: str) -> None:
    assert rewrite(query) == rewritten
