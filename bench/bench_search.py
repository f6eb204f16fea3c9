"""Search-step throughput and peak memory of the EL-DARTS, PC-DARTS and DARTS recipes.

A search step is what ``Searcher.run_epoch`` does per batch: make a weight
batch and an architecture batch, one architecture step, one weight step.
Every recipe runs at the same size (batch 32, C=16, 8 cells, 32x32 images,
random images so no dataset is needed), each in its own process so peak
memory is that recipe's alone.

    python bench/bench_search.py                 # all three, table + bench/results-search-<device>.md
    python bench/bench_search.py --steps 10 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "EL-DARTS": "recipes/search-cifar10.yaml",
    "PC-DARTS": "recipes/search-pcdarts-cifar10.yaml",
    "DARTS (1st order)": "recipes/search-darts-cifar10.yaml",
}
# Reference implementation, same machine kind (2 CPU cores), batch 32, C=16, 8 cells (issue 2).
REFERENCE_S_PER_STEP = {"EL-DARTS": ("PC-DARTS code, 4-op space", 2.24), "PC-DARTS": ("PC-DARTS code", 4.96)}


def one(recipe: str, batch: int, steps: int, warmup: int, device: str, extra: list[str]) -> dict:
    import tempfile

    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    overrides = [
        "data.dataset=fake", f"data.batch_size={batch}", f"data.limit={2 * batch * (steps + warmup)}",
        "search.epochs=2", "search.warmup_epochs=0", f"runtime.device={device}", *extra,
    ]
    cfg = load_recipe(ROOT / recipe, SearchRecipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        s = Searcher(cfg, Path(tmp))
        cuda = s.device.type == "cuda"
        times = []
        batches = zip(s.data.train.epoch(0), s.data.arch.epoch(0))
        for i, ((x, y), (xa, ya)) in enumerate(batches):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            s._arch_step(xa, ya, 1.0 if cfg.entropy.enabled else None)
            s._weight_step(x, y)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        times = times[warmup:]
    times.sort()
    median = times[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "s_per_step": median, "min": times[0], "max": times[-1], "images_per_s": batch / median,
        "peak_mib": peak, "steps": len(times), "threads": torch.get_num_threads(),
        "device": "cuda" if cuda else "cpu", "weights_m": sum(p.numel() for p in s.model.weight_parameters()) / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra recipe override")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update bench/results-*.md")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.batch, args.steps, args.warmup, args.device, args.extra)))
        return

    import torch

    rows = {}
    for name, recipe in RECIPES.items():
        cmd = [sys.executable, __file__, "--one", recipe, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device] + [f"--set={e}" for e in args.extra]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stderr}")
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    from eldarts_cli.core.device import cpu_model

    cpu = cpu_model()
    device = rows["EL-DARTS"]["device"]
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{cpu}, {rows['EL-DARTS']['threads']} threads"
    lines = [
        f"Search step (arch step + weight step), batch {args.batch}, C=16, 8 cells, 32x32, "
        f"median of {args.steps} steps after {args.warmup} warm-up steps",
        f"machine: {machine}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}",
        f"extra overrides: {args.extra or 'none'}",
        "",
        "| recipe | s/step (median) | min-max | images/s | peak memory (MiB) | weights (M) | reference s/step | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ref = REFERENCE_S_PER_STEP.get(name)
        ref_txt, speedup = (f"{ref[1]:.2f} ({ref[0]})", f"{ref[1] / r['s_per_step']:.2f}x") if ref and device == "cpu" else ("-", "-")
        if name == "EL-DARTS" and device == "cpu":
            speedup += f" (vs PC-DARTS 4.96 s: {4.96 / r['s_per_step']:.2f}x)"
        lines.append(
            f"| {name} | {r['s_per_step']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['peak_mib']:.0f} | {r['weights_m']:.3f} | {ref_txt} | {speedup} |"
        )
    lines += ["", "Reference figures are the issue's measurements of the public PC-DARTS code on this machine kind "
              "(2 CPU cores); they were not re-measured here."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (ROOT / "bench" / f"results-search-{device}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
