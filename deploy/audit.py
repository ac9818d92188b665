"""``make audit``: known vulnerabilities in the locked dependencies, with an allow-list.

Exports every locked package (``uv export --frozen``, all groups: the image's and the tools
CI runs) and asks pip-audit about exactly those versions, without installing anything. It
passes only when every package was checked and every finding is on the allow-list
(``deploy/audit-allowlist.toml``: the id, why it is accepted, a date to review it by):

- a finding not on the list, or on it past its review date: exit 1, listed;
- the vulnerability service cannot be reached, or any package could not be checked: exit 2
  and a message saying nothing (or not everything) was checked. Never a pass: an audit that
  could not look is not a clean audit.

It needs the vulnerability service (PyPI's JSON API by default, ``AUDIT_SERVICE=osv`` for
osv.dev), so it is not part of ``make test``, which runs where that may be out of reach.
pip-audit itself runs through ``uv tool run`` at a pinned version, so it is not a project
dependency and needs no lock entry.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALLOWLIST = ROOT / "deploy" / "audit-allowlist.toml"
PIP_AUDIT = "pip-audit==2.10.1"
NOT_CHECKED = 2


@dataclass(frozen=True)
class Allowed:
    """One accepted finding."""

    id: str
    package: str
    reason: str
    review_by: datetime.date


@dataclass(frozen=True)
class Finding:
    """One vulnerability pip-audit reported for a locked package."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


def load_allowlist(path: Path = ALLOWLIST) -> list[Allowed]:
    """The accepted findings; raises ValueError for an entry missing a field."""
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    allowed = []
    for i, entry in enumerate(data.get("allow", [])):
        missing = {"id", "package", "reason", "review_by"} - set(entry)
        if missing:
            raise ValueError(f"{path.name}: allow[{i}] lacks {', '.join(sorted(missing))}")
        review_by = entry["review_by"]
        if not isinstance(review_by, datetime.date) or isinstance(review_by, datetime.datetime):
            raise ValueError(f"{path.name}: allow[{i}].review_by must be a date (2027-01-31)")
        if not str(entry["reason"]).strip():
            raise ValueError(f"{path.name}: allow[{i}] gives no reason")
        allowed.append(Allowed(str(entry["id"]), str(entry["package"]), entry["reason"], review_by))
    return allowed


def findings_of(report: dict[str, Any]) -> tuple[list[Finding], list[str]]:
    """The findings of a pip-audit JSON report, and the packages it could not check."""
    findings: list[Finding] = []
    unchecked: list[str] = []
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            unchecked.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        for vuln in dep.get("vulns", []):
            findings.append(
                Finding(
                    dep["name"],
                    dep.get("version", "?"),
                    vuln["id"],
                    tuple(vuln.get("aliases", [])),
                    tuple(vuln.get("fix_versions", [])),
                )
            )
    return findings, unchecked


def judge(
    findings: list[Finding], allowed: list[Allowed], today: datetime.date
) -> tuple[list[str], list[str]]:
    """Lines to report: the failures, then the notes (accepted findings, unused entries)."""
    failures: list[str] = []
    notes: list[str] = []
    used: set[int] = set()
    for f in findings:
        match = next(
            (
                (i, a)
                for i, a in enumerate(allowed)
                if a.id in f.ids() and a.package.lower() == f.package.lower()
            ),
            None,
        )
        fix = f"fixed in {', '.join(f.fix_versions)}" if f.fix_versions else "no fixed version"
        what = f"{f.package} {f.version}: {f.id} ({fix})"
        if match is None:
            failures.append(f"{what}: not on the allow-list")
            continue
        i, entry = match
        used.add(i)
        if entry.review_by < today:
            failures.append(f"{what}: allowed until {entry.review_by}, review it again")
        else:
            notes.append(f"{what}: allowed until {entry.review_by} ({entry.reason})")
    for i, entry in enumerate(allowed):
        if i not in used:
            notes.append(
                f"allow-list entry {entry.id} ({entry.package}) matches nothing: remove it"
            )
    return failures, notes


def uv_command() -> str:
    """The uv running us (``uv run`` says where it is), else the one on PATH."""
    return os.environ.get("UV") or shutil.which("uv") or "uv"


def export_lock(folder: Path) -> Path:
    """Every locked package, pinned, as a requirements file (the project itself left out)."""
    path = folder / "requirements.txt"
    uv = uv_command()
    subprocess.run(  # noqa: S603
        [
            uv, "export", "--frozen", "--all-groups", "--no-hashes",
            "--no-emit-project", "--no-header", "--output-file", str(path),
        ],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return path


def run_pip_audit(
    requirements: Path, report: Path, service: str
) -> subprocess.CompletedProcess[str]:
    """pip-audit (pinned, through ``uv tool run``) on exactly the exported versions."""
    uv = uv_command()
    return subprocess.run(  # noqa: S603
        [
            uv, "tool", "run", "--from", PIP_AUDIT, "pip-audit",
            "--requirement", str(requirements),
            # the exported versions as they are: nothing resolved or installed
            "--no-deps", "--disable-pip",
            "--vulnerability-service", service,
            "--format", "json", "--output", str(report),
            "--progress-spinner", "off",
        ],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make audit", description=__doc__.splitlines()[0])
    parser.add_argument("--service", default=os.environ.get("AUDIT_SERVICE", "pypi"))
    args = parser.parse_args(argv)
    allowed = load_allowlist()
    with tempfile.TemporaryDirectory(prefix="aistack-audit-") as tmp:
        folder = Path(tmp)
        requirements = export_lock(folder)
        count = sum(
            1 for line in requirements.read_text().splitlines() if line and line[0].isalnum()
        )
        report_path = folder / "report.json"
        print(f"audit: {count} locked packages against the {args.service} vulnerability service")
        done = run_pip_audit(requirements, report_path, args.service)
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError):
            report = None
    if report is None:
        # pip-audit writes its report only once it has asked about everything
        # its last words say why (a traceback's last line: the connection error)
        print("\n".join(done.stderr.strip().splitlines()[-3:]), file=sys.stderr)
        print(
            f"\naudit: NOT CHECKED: pip-audit gave no report (it could not be fetched, or "
            f"could not reach the {args.service} vulnerability service: see above). Nothing "
            "was checked; this is not a pass.",
            file=sys.stderr,
        )
        return NOT_CHECKED
    findings, unchecked = findings_of(report)
    failures, notes = judge(findings, allowed, datetime.date.today())
    for line in notes:
        print(f"  note: {line}")
    for line in failures:
        print(f"  FAIL: {line}")
    if unchecked:
        for line in unchecked:
            print(f"  NOT CHECKED: {line}", file=sys.stderr)
        print(
            f"\naudit: NOT CHECKED: {len(unchecked)} of {count} packages could not be checked",
            file=sys.stderr,
        )
        return NOT_CHECKED
    if failures:
        print(
            f"\naudit: {len(failures)} finding(s) to fix or to review (deploy/audit-allowlist.toml)"
        )
        return 1
    print(f"audit: {count} packages checked, no unreviewed vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
