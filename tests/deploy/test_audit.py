"""make audit's verdicts (deploy/audit.py), without the vulnerability service it needs."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy import audit

TODAY = datetime.date(2027, 1, 15)


def _report(*deps: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(deps), "fixes": []}


VULN = {"id": "GHSA-aaaa-bbbb-cccc", "aliases": ["CVE-2026-1"], "fix_versions": ["2.0"]}


def test_the_allowlist_in_the_repository_is_well_formed() -> None:
    for entry in audit.load_allowlist():
        assert entry.reason.strip() and entry.review_by


def test_allowlist_entries_need_a_reason_and_a_review_date(tmp_path: Path) -> None:
    path = tmp_path / "allow.toml"
    path.write_text('[[allow]]\nid = "X"\npackage = "p"\nreview_by = 2027-01-01\n')
    with pytest.raises(ValueError, match="lacks reason"):
        audit.load_allowlist(path)
    path.write_text('[[allow]]\nid = "X"\npackage = "p"\nreason = "r"\nreview_by = "soon"\n')
    with pytest.raises(ValueError, match="must be a date"):
        audit.load_allowlist(path)


def test_findings_fail_unless_allowed_and_reviewed_in_time() -> None:
    findings, unchecked = audit.findings_of(
        _report(
            {"name": "ok", "version": "1.0", "vulns": []},
            {"name": "bad", "version": "1.0", "vulns": [VULN]},
        )
    )
    assert unchecked == []
    failures, _ = audit.judge(findings, [], TODAY)
    assert failures == ["bad 1.0: GHSA-aaaa-bbbb-cccc (fixed in 2.0): not on the allow-list"]

    # by an alias, reviewed until a later date: a note, not a failure
    until = datetime.date(2027, 3, 1)
    allowed = [audit.Allowed("CVE-2026-1", "bad", "never called", until)]
    failures, notes = audit.judge(findings, allowed, TODAY)
    assert failures == [] and "allowed until 2027-03-01 (never called)" in notes[0]

    stale = [audit.Allowed("CVE-2026-1", "bad", "never called", datetime.date(2027, 1, 1))]
    failures, _ = audit.judge(findings, stale, TODAY)
    assert failures == [
        "bad 1.0: GHSA-aaaa-bbbb-cccc (fixed in 2.0): allowed until 2027-01-01, review it again"
    ]
    # the same id in another package is not covered
    other = [audit.Allowed("CVE-2026-1", "other", "r", until)]
    failures, notes = audit.judge(findings, other, TODAY)
    assert len(failures) == 1 and "matches nothing" in notes[0]


def _main_with(
    monkeypatch: pytest.MonkeyPatch, report: dict[str, Any] | None, stderr: str = ""
) -> int:
    def fake_pip_audit(
        requirements: Path, report_path: Path, service: str
    ) -> subprocess.CompletedProcess[str]:
        # the real export ran: every locked package, pinned
        assert "fastapi==" in requirements.read_text()
        if report is not None:
            report_path.write_text(json.dumps(report))
        return subprocess.CompletedProcess([], 0 if report else 1, "", stderr)

    monkeypatch.setattr(audit, "run_pip_audit", fake_pip_audit)
    return audit.main([])


def test_an_unreachable_service_is_never_a_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _main_with(monkeypatch, None, "requests.exceptions.ConnectionError: osv.dev")
    assert code == audit.NOT_CHECKED
    err = capsys.readouterr().err
    assert "NOT CHECKED" in err and "this is not a pass" in err and "ConnectionError" in err


def test_a_package_that_could_not_be_checked_is_not_a_pass(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report(
        {"name": "fastapi", "version": "1", "vulns": []},
        {"name": "pyreqwest", "skip_reason": "Dependency not found on PyPI"},
    )
    assert _main_with(monkeypatch, report) == audit.NOT_CHECKED
    assert "NOT CHECKED: pyreqwest: Dependency not found on PyPI" in capsys.readouterr().err


def test_verdicts_of_a_complete_report(monkeypatch: pytest.MonkeyPatch) -> None:
    clean = _report({"name": "fastapi", "version": "1", "vulns": []})
    assert _main_with(monkeypatch, clean) == 0
    found = _report({"name": "fastapi", "version": "1", "vulns": [VULN]})
    assert _main_with(monkeypatch, found) == 1
