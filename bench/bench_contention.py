"""A search step alone and beside another CPU-bound process, for three CPU thread policies.

PyTorch's OpenMP threads spin while they wait for each other; on a machine
whose cores another job also uses, a step can take several times as long as
alone. This measures it for:

* ``threads=N`` fixed at the number of cores (torch's own default here),
* ``threads=1`` fixed,
* ``auto``: eldarts' default (``runtime.threads`` unset), which measures the
  other processes' load and uses the cores they leave free
  (``eldarts_cli/core/threads.py``).

Each policy is timed alone, then beside a competitor: a process that keeps
one core busy (a Python loop), started before the search and kept running.
Steps are the recipe's search steps (architecture + weight step) at the given
batch, through ``Searcher.search_step`` with the thread governor consulted
each step as the search loop does. Median seconds per step after warm-up.

    python bench/bench_contention.py                      # EL-DARTS recipe, batch 32
    python bench/bench_contention.py --batch 64 --steps 12 --write bench/results-contention-cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_search import child_env  # (bench/ is this script's folder)

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def one(args: argparse.Namespace) -> dict:
    import tempfile

    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    overrides = ["data.dataset=fake", f"data.batch_size={args.batch}", f"data.limit={2 * args.batch * 2}",
                 "search.epochs=2", "search.warmup_epochs=0", "runtime.device=cpu"]
    if args.policy != "auto":
        overrides.append(f"runtime.threads={args.policy}")
    recipe = load_recipe(ROOT / args.recipe, SearchRecipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        searcher = Searcher(recipe, Path(tmp))
        (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
        temp = 1.0 if recipe.entropy.enabled else None
        times, threads = [], []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            searcher.search_step(x, y, xa, ya, temp, recipe.optim.lr, epoch=0, step=i)
            elapsed = time.perf_counter() - start
            if searcher.threads is not None:
                searcher.threads.update()  # as the search loop does every runtime.log_every steps
            if i >= args.warmup:
                times.append(elapsed)
                threads.append(torch.get_num_threads())
    return {"s_per_step": statistics.median(times), "min": min(times), "max": max(times),
            "threads": sorted(set(threads))}


def run(args: argparse.Namespace, policy: str, busy: bool) -> dict:
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        if competitor is not None:
            time.sleep(1.0)  # let it take its core
        cmd = [sys.executable, __file__, "--one", "--policy", policy, "--recipe", args.recipe,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        env = child_env()
        env.pop("OMP_NUM_THREADS", None)
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/search-cifar10.yaml")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alone/busy pairs per policy (medians reported)")
    ap.add_argument("--write", help="also write the table to this Markdown file")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return

    import torch

    from eldarts_cli.core.device import cpu_label

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    policies = [str(cores), "1", "auto"]
    results: dict[tuple[str, bool], list[dict]] = {}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for policy in policies:
            for busy in (False, True):
                print(f"threads={policy} {'beside a busy process' if busy else 'alone'} ...", file=sys.stderr, flush=True)
                results.setdefault((policy, busy), []).append(run(args, policy, busy))
    alone_auto = statistics.median(r["s_per_step"] for r in results[("auto", False)])
    lines = [
        f"Search step ({args.recipe}, batch {args.batch}, C=16, 8 cells, 32x32 random images), median of "
        f"{args.steps} steps after {args.warmup} warm-up, median over {args.rounds} rounds; busy = beside a "
        "process that keeps one core busy.",
        f"Machine: {cpu_label(detail=True)}, {cores} cores; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average before {load:.2f}",
        "",
        "| threads | alone s/step | busy s/step | busy / alone | busy / alone with auto | threads used (alone, busy) |",
        "|---|---|---|---|---|---|",
    ]
    for policy in policies:
        alone = statistics.median(r["s_per_step"] for r in results[(policy, False)])
        busy = statistics.median(r["s_per_step"] for r in results[(policy, True)])
        used = (sorted({t for r in results[(policy, False)] for t in r["threads"]}),
                sorted({t for r in results[(policy, True)] for t in r["threads"]}))
        label = policy if policy != "auto" else "auto (default)"
        lines.append(f"| {label} | {alone:.3f} | {busy:.3f} | {busy / alone:.2f}x | {busy / alone_auto:.2f}x | "
                     f"{used[0]}, {used[1]} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
