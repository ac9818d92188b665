"""Variants of the request path measured in one run, interleaved, on one stack.

The machine is shared and its speed drifts by 2-3x between hours, so two variants are only
comparable when measured in the same minutes: every round starts a gateway and an llm for each
variant in turn (the order rotates per round) against the same fake upstream, auth service,
PostgreSQL and Redis, and measures them with the llm bench's requests plus the gateway alone
(an anonymous route proxied straight to the fake upstream).

A variant is ``CLIENT`` (the gateway's ``GATEWAY_UPSTREAM_CLIENT`` and the llm's ``http_pool``)
or ``CLIENT@TREE`` (the same, with the gateway and the llm of another source tree, e.g. an
export of main: a before/after comparison of code)::

    python -m tests.bench.compare aiohttp auto --rounds 3 --duration 4
    python -m tests.bench.compare aiohttp@/tmp/main aiohttp --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.bench import load
from tests.bench.llm_bench import BODY, LIMITS, _stream_ok, api_key, cpu_probe, models_yaml
from tests.bench.stack import Stack, stack


@dataclass
class Variant:
    client: str
    tree: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        client, _, tree = spec.partition("@")
        return cls(client, Path(tree).resolve() if tree else None)

    @property
    def label(self) -> str:
        return self.client + (f"@{self.tree.name}" if self.tree else "")


# what one variant measured: (row, metric) -> one value per round
Figures = dict[tuple[str, str], list[float]]


@dataclass
class Measured:
    figures: Figures = field(default_factory=lambda: defaultdict(list))


ROWS = [
    # (label, path, stream, concurrency, through the llm)
    ("chat", "/v1/chat/completions", False, 1, True),
    ("chat stream", "/v1/chat/completions", True, 1, True),
    ("chat", "/v1/chat/completions", False, 16, True),
    ("chat stream", "/v1/chat/completions", True, 16, True),
    ("gateway only", "/v1/billing/webhooks/bench", False, 16, False),
    ("gateway only, stream", "/v1/billing/webhooks/bench", True, 16, False),
]


def _start(s: Stack, n: int, v: Variant, config: Path, auth: str, fake: str) -> dict[str, str]:
    llm = s.start(
        f"llm-{n}",
        "services.llm.app:app",
        env={"LLM_MODELS_CONFIG": str(config)},
        cwd=v.tree,
    )
    gateway = s.start(
        f"gateway-{n}",
        "gateway.app:app",
        env={
            "GATEWAY_AUTH_URL": auth,
            "GATEWAY_LLM_URL": llm.url,
            "GATEWAY_BILLING_URL": fake,
            "GATEWAY_UPSTREAM_CLIENT": v.client,
            **LIMITS,
        },
        cwd=v.tree,
    )
    return {"gateway": gateway.name, "llm": llm.name}


def _answered(status: int, body: bytes) -> bool:
    return status == 200


async def _measure(
    gateway: str, key: str, duration: float, probe: Callable[[], dict[str, float]]
) -> list[load.Result]:
    results = []
    for label, path, stream, concurrency, via_llm in ROWS:
        body = {**BODY, "stream": True} if stream else BODY
        results.append(
            await load.run(
                label,
                gateway + path,
                method="POST",
                json=body,
                headers={"authorization": f"Bearer {key}"} if via_llm else {},
                concurrency=concurrency,
                duration=duration,
                check=_stream_ok if stream else _answered,
                cpu_probe=probe,
            )
        )
    return results


def run(variants: list[Variant], rounds: int, duration: float) -> str:
    measured = {v.label: Measured() for v in variants}
    with stack() as s, tempfile.TemporaryDirectory() as tmp:
        fake = s.start_fake_openai()
        auth = s.start("auth", "services.auth.app:app")
        key = ""
        n = 0
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                n += 1
                folder = Path(tmp) / str(n)
                folder.mkdir()
                config = models_yaml(fake.url, folder, v.client)
                names = _start(s, n, v, config, auth.url, fake.url)
                procs = {role: s.procs[name] for role, name in names.items()}
                idle = {role: p.rss_mb() for role, p in procs.items()}
                key = key or api_key(procs["gateway"].url)
                watched = {role: psutil.Process(p.popen.pid) for role, p in procs.items()}
                results = asyncio.run(
                    _measure(procs["gateway"].url, key, duration, cpu_probe(watched))
                )
                f = measured[v.label].figures
                for res in results:
                    row = f"{res.name} c={res.concurrency}"
                    f[(row, "requests/s")].append(res.rps)
                    f[(row, "p50 ms")].append(res.p50)
                    f[(row, "CPU ms gateway")].append(res.cpu_ms["gateway"])
                    f[(row, "CPU ms llm")].append(res.cpu_ms["llm"])
                    f[(row, "errors")].append(res.errors)
                for role, p in procs.items():
                    f[(f"{role} MiB", "idle")].append(idle[role])
                    f[(f"{role} MiB", "after load")].append(p.rss_mb())
                for name in names.values():
                    s.stop_proc(name)
                print(f"round {r + 1}/{rounds}: {v.label} measured", flush=True)
    return report(measured)


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return ""
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(measured: dict[str, Measured]) -> str:
    labels = list(measured)
    keys = list(next(iter(measured.values())).figures)
    lines = [
        "Median (min-max) over the rounds.\n",
        "| Row | Figure | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for row, metric in keys:
        if metric == "CPU ms llm" and row.startswith("gateway only"):
            continue
        fmt = ",.0f" if metric in ("requests/s", "errors", "idle", "after load") else ".2f"
        cells = " | ".join(_cell(measured[lb].figures[(row, metric)], fmt) for lb in labels)
        lines.append(f"| {row} | {metric} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare")
    parser.add_argument("variants", nargs="+", help="CLIENT or CLIENT@TREE (see the docstring)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    args = parser.parse_args()
    print(run([Variant.parse(v) for v in args.variants], args.rounds, args.duration))


if __name__ == "__main__":
    main()
