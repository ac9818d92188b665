"""Short texts in many scripts, for tests that count, chunk or search text."""

# ruff: noqa: RUF001  (text in other scripts, punctuation included)

from __future__ import annotations

SAMPLES = {
    "en": "The quick brown fox jumps over the lazy dog, then naps. It's 12:30.",
    "zh": "我们今天讨论了这个项目的进展情况，并就下一步计划达成了一致。",
    "ja": "今日はプロジェクトの進捗について話し合い、次のステップについて合意しました。",
    "ko": "오늘 우리는 프로젝트 진행 상황을 논의하고 다음 단계에 합의했습니다.",
    "ru": "Сегодня мы обсудили ход проекта и договорились о следующих шагах.",
    "ar": "ناقشنا اليوم تقدم المشروع واتفقنا على الخطوات التالية.",
    "th": "วันนี้เราได้หารือเกี่ยวกับความคืบหน้าของโครงการ",
    "emoji": "🎉👍🔥😀 great!",
    "code": "def f(x):\n    return {'a': [x, x ** 2]}  # tab\there\n",
    "special": "<|endoftext|> and <|endofprompt|> are plain text here",
}
