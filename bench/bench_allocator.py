"""What ``runtime.allocator: auto`` (``eldarts_cli/core/allocator.py``) changes on the CPU, measured beside glibc's defaults.

Each setting runs in its own process (malloc's settings are per process):

* ``system``: glibc malloc as it comes (``runtime.allocator=system``);
* ``auto``: eldarts' default, freed memory kept for the next tensors.

Reported: a new 64 MiB tensor (``clone``) against a copy into an existing one,
and an EL-DARTS search step at ``--batch`` (C=16, 8 cells, random 32x32 images):
median s/step, minor page faults and system CPU seconds per step, peak RSS.

    python bench/bench_allocator.py
    python bench/bench_allocator.py --batch 32 --write bench/results-allocator-cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_search import child_env  # (bench/ is this script's folder)

ROOT = Path(__file__).resolve().parents[1]


def child(setting: str, batch: int, steps: int) -> dict:
    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.core import allocator
    from eldarts_cli.engines.search import Searcher

    applied = allocator.configure(setting, "cpu")
    a = torch.randn(16 * 2**20)
    b = torch.empty_like(a)
    fresh, existing = [], []
    for _ in range(9):
        start = time.perf_counter()
        c = a.clone()
        fresh.append(time.perf_counter() - start)
        del c
        start = time.perf_counter()
        b.copy_(a)
        existing.append(time.perf_counter() - start)

    overrides = ["data.dataset=fake", f"data.batch_size={batch}", f"data.limit={4 * batch}", "search.epochs=2",
                 "search.warmup_epochs=0", "runtime.device=cpu", f"runtime.allocator={setting}"]
    recipe = load_recipe(ROOT / "recipes/search-cifar10.yaml", SearchRecipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        searcher = Searcher(recipe, Path(tmp))
        (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
        rows = []
        for i in range(steps + 1):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            searcher.search_step(x, y, xa, ya, 1.0, lr=recipe.optim.lr)
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            if i:  # the first step is a warm-up
                rows.append((t1 - t0, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
    return {
        "applied": applied, "fresh_ms": 1e3 * statistics.median(fresh), "existing_ms": 1e3 * statistics.median(existing),
        "s_per_step": statistics.median(r[0] for r in rows), "faults": statistics.median(r[1] for r in rows),
        "sys_s": statistics.median(r[2] for r in rows),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median)")
    parser.add_argument("--write", help="also write the table to this Markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.steps)))
        return
    from eldarts_cli.core.device import cpu_label

    results = {}
    for setting in ("system", "auto"):
        print(f"runtime.allocator={setting} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", setting, "--batch", str(args.batch),
                               "--steps", str(args.steps)], capture_output=True, text=True, cwd=ROOT,
                              env=child_env())
        if proc.returncode:
            sys.exit(f"error: the {setting} child failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    r = results["auto"]
    lines = [
        f"runtime.allocator, each setting in its own process; EL-DARTS search step at batch {args.batch} "
        f"(median of {args.steps} after one warm-up), {time.strftime('%Y-%m-%d %H:%M')}",
        f"Machine: {cpu_label(detail=True)}, {os.cpu_count()} cores, {r['threads']} torch threads; torch {r['torch']}; "
        f"Python {platform.python_version()}; glibc settings applied: {r['applied']}",
        "",
        "| runtime.allocator | new 64 MiB tensor, ms | copy into an existing one, ms | s/step | minor faults/step "
        "| system CPU s/step | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, r in results.items():
        lines.append(f"| {setting} | {r['fresh_ms']:.1f} | {r['existing_ms']:.1f} | {r['s_per_step']:.3f} | "
                     f"{r['faults']:.0f} | {r['sys_s']:.2f} | {r['peak_mib']:.0f} |")
    speed = results["system"]["s_per_step"] / results["auto"]["s_per_step"]
    lines += ["", f"Search step, system / auto: {speed:.2f}x"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
