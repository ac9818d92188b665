"""``make bench``: every benchmark, figures printed as Markdown (see docs/benchmarks.md).

make bench                          all of them
make bench BENCH_ARGS="llm"         one of them (llm, auth, rag, jobs, batch, notify, billing, idle)
make bench BENCH_ARGS="fanout"      the notification fan-out at full size (never run by default:
                                    10,000 events to 100 users, ~20 minutes on two cores)
make bench BENCH_ARGS="--duration 20"
make bench BENCH_ARGS="litellm"     LiteLLM's proxy measured the same way (never run by default:
                                    it needs its own virtualenv, see tests/bench/litellm_anchor.py)
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time

import psutil

BENCHES = {
    "llm": "tests.bench.llm_bench",
    "auth": "tests.bench.auth_bench",
    "rag": "tests.bench.rag_bench",
    "jobs": "tests.bench.jobs_bench",
    "batch": "tests.bench.batch_bench",
    "notify": "tests.bench.notify_bench",
    "billing": "tests.bench.billing_bench",
    "idle": "tests.bench.idle_rss",
}
# run only when named: a reference measured next to aistack, not a benchmark of aistack; and
# the notification fan-out at issue 16's full size (about 20 minutes on two cores)
OPTIONAL = {"litellm": "tests.bench.litellm_anchor", "fanout": "tests.bench.fanout_bench"}


def machine_speed() -> float:
    """Seconds for a plain interpreter loop: virtual machines of one class differ by 2-3x
    between days, and so do requests/s."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    known = {**BENCHES, **OPTIONAL}
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("only", nargs="*", help=f"benchmarks to run ({', '.join(known)})")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    args = parser.parse_args()
    unknown = set(args.only) - set(known)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    print(
        f"# aistack benchmarks\n\n{platform.python_implementation()} {platform.python_version()}, "
        f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"this machine's speed: {machine_speed():.2f} s for 10 million Python additions "
        "(the figures scale with it: compare runs of different days by their ratios)\n"
    )
    for name in args.only or list(BENCHES):
        module = importlib.import_module(known[name])
        print(f"## {name}\n", flush=True)
        print(module.run_bench(args.duration), "\n", flush=True)


if __name__ == "__main__":
    main()
