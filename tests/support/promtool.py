"""promtool (Prometheus' checker) from Debian's ``prometheus`` package, unpacked once into
``.data/tools`` (no system install: ``apt-get download`` and ``dpkg-deb -x``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".data" / "tools"


def promtool() -> Path:
    """The promtool binary, fetched on first use (a fresh machine's package lists are read
    first when the download cannot find the package)."""
    path = TOOLS / "promtool"
    if path.exists():
        return path
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "prometheus"]
        if subprocess.run(download, cwd=tmp, capture_output=True, timeout=300).returncode:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            subprocess.run(download, cwd=tmp, capture_output=True, timeout=300, check=True)
        deb = next(Path(tmp).glob("prometheus_*.deb"))
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
        staged = TOOLS / "promtool.partial"
        shutil.copy(unpacked / "usr" / "bin" / "promtool", staged)
        staged.chmod(0o755)
        staged.replace(path)
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool with ``args``; its output in the result."""
    return subprocess.run(
        [str(promtool()), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
