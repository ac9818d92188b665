"""Validate a Compose file without a Docker engine.

Checks the file against the Compose Specification's JSON schema (vendored by
check-jsonschema), then what the schema cannot see: every ``depends_on`` names a defined
service, every long-running service has a healthcheck, every build context and Dockerfile
exists, named volumes are declared, files bind-mounted from the repository exist, and no host
port is published twice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def semantic_errors(doc: dict[str, Any], base: Path) -> list[str]:
    """Problems the schema does not catch."""
    errors: list[str] = []
    services: dict[str, Any] = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    host_ports: dict[str, str] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                errors.append(f"{name}: depends_on unknown service '{dep}'")
        # one-shot services (migrations) exit; everything else must report its health
        if "healthcheck" not in svc and svc.get("restart") != "no":
            errors.append(f"{name}: no healthcheck")
        build = svc.get("build")
        if build:
            ctx = base / (build if isinstance(build, str) else build.get("context", "."))
            if not ctx.is_dir():
                errors.append(f"{name}: build context {ctx} does not exist")
            elif (
                isinstance(build, dict)
                and build.get("dockerfile")
                and not (ctx / build["dockerfile"]).is_file()
            ):
                errors.append(f"{name}: Dockerfile {ctx / build['dockerfile']} does not exist")
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                errors.append(f"{name}: volume '{source}' is not declared")
            # a missing bind source is created by Docker as an empty directory: the service
            # then fails on a config "file" that is a directory
            if source.startswith(".") and not (base / source).exists():
                errors.append(f"{name}: bind-mounted {source} does not exist")
        for port in svc.get("ports") or []:
            published = str(port).rsplit(":", 1)[0] if ":" in str(port) else None
            if published:
                if published in host_ports:
                    errors.append(
                        f"{name}: host port {published} also used by {host_ports[published]}"
                    )
                host_ports[published] = name
    return errors


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "compose.yaml")
    schema = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if schema.returncode != 0:
        print(schema.stdout + schema.stderr, file=sys.stderr)
        return 1
    doc = yaml.safe_load(path.read_text())
    errors = semantic_errors(doc, path.resolve().parent)
    for err in errors:
        print(f"{path}: {err}", file=sys.stderr)
    if errors:
        return 1
    print(f"{path}: valid ({len(doc.get('services') or {})} services)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
