"""Search-step speed and memory of eldarts' fused supernet beside the edge-by-edge reference, measured in one run.

A search step is what ``Searcher.run_epoch`` does per batch: one architecture
step and one weight step (first order). Every configuration runs in its own
process (so peak memory is its own) on random 32x32 images at the recipe's
size (C=16, 8 cells), with the same thread count:

* ``eldarts``: the recipe as shipped, with eldarts' defaults (the fused
  supernet, ``runtime.channels_last`` and ``runtime.threads`` left to eldarts);
* ``reference``: ``network.implementation=reference``, one module per op per
  edge, as in the public DARTS/PC-DARTS code (``eldarts_cli/models/reference.py``;
  the same function, checked in tests/test_supernet.py), run as that code
  runs: contiguous (NCHW) fp32 tensors, stepped by eldarts' own search step
  (so this ratio is the supernet's alone);
* ``public``: the same reference supernet stepped as the public code's
  ``train_search.py`` steps it (:func:`public_code_step`): each phase's
  ``loss.backward()`` computes every gradient, the weights' in the
  architecture step and the architecture's in the weight step, where
  eldarts computes only the ones its phase updates. The same updates. This
  is not the public code itself: its data loading, per-step accuracy and
  host syncs, per-cell softmaxes and per-tensor SGD are not reproduced (each
  would make the baseline slower, none is counted). First-order recipes with
  fixed partial channels only (the three shipped ones).

Reported per recipe and batch: median seconds per step, images/s, peak memory
(CPU: max RSS of the process; CUDA: ``max_memory_allocated``), achieved
GFLOP/s (``2 x forward MACs x 3 x 2 / time``: thop's forward MACs of the
supernet at that batch, 2 FLOPs per MAC, a backward counted as two forwards,
two forward+backward passes per step), and the reference / eldarts ratios.
With ``--rounds N`` every configuration's processes run N times, in
alternating order, and the speed-up is the median of the rounds' ratios
(each round's reference over the same round's variant): on a machine whose
speed drifts, a ratio of two processes minutes apart moves with the drift.
A configuration that runs out of memory (or past ``--memory-limit`` GiB of
address space on the CPU) is reported as such.

    python bench/bench_search.py                               # CPU: 3 recipes x batch 32, 256
    python bench/bench_search.py --batches 32 --recipes el-darts --steps 4
    python bench/bench_search.py --device cuda --compile       # adds torch.compile rows
    python bench/bench_search.py --profile                     # top ops of the eldarts step at the first batch
    python bench/bench_search.py --profile-calls               # the same, each ATen call timed, by input shapes
    python bench/bench_search.py --recompute                   # adds runtime.recompute=true rows
    python bench/bench_search.py --batches 32 --rounds 3       # 3 rounds per configuration, alternating order
    python bench/bench_search.py --interleaved                 # adds a table of both in one process, steps alternated
    python bench/bench_search.py --interleaved-only --steps 5  # only that table
    python bench/bench_search.py --variants compiled --timeout 300  # compiled rows only, 5 min a process at most
    python bench/bench_search.py --device cuda --variants graphs     # compiled with CUDA graphs (reduce-overhead)
    python bench/bench_search.py --variants eldarts,nchw --baseline nchw --rounds 2  # NHWC against NCHW
    python bench/bench_search.py --variants eldarts,public --baseline public  # against the public code's step only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "el-darts": ("EL-DARTS", "recipes/search-cifar10.yaml"),
    "pc-darts": ("PC-DARTS", "recipes/search-pcdarts-cifar10.yaml"),
    "darts": ("DARTS (1st order)", "recipes/search-darts-cifar10.yaml"),
}
PASSES = 6  # two forward+backward passes per step, a backward counted as two forwards


def _overrides(batch: int, steps: int, warmup: int, device: str, implementation: str, extra: list[str]) -> list[str]:
    out = [
        "data.dataset=fake", f"data.batch_size={batch}", f"data.limit={2 * batch * 2}",
        "search.epochs=2", "search.warmup_epochs=0", f"runtime.device={device}",
    ]
    out += extra
    if implementation in ("reference", "public"):  # last, so that no override changes how the reference runs
        out += ["network.implementation=reference", "runtime.channels_last=false", "runtime.amp=none",
                "runtime.compile=false", "runtime.recompute=false"]
    return out


def _search_step(args: argparse.Namespace, key: str, implementation: str, run_dir: Path):
    """A Searcher for ``key``'s recipe at this run's settings, and its search step on one fixed batch."""
    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    recipe = load_recipe(ROOT / RECIPES[key][1], SearchRecipe,
                         _overrides(args.batch, args.steps, args.warmup, args.device, implementation, args.set))
    if implementation == "public" and (recipe.search.order != "first" or recipe.partial_channels.sampling != "fixed"
                                       or recipe.cost is not None):
        raise SystemExit("error: the public-style step reproduces first-order steps with fixed partial channels and "
                         "no cost term; leave 'public' out of --variants for this recipe")
    searcher = Searcher(recipe, run_dir)
    (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
    temp = 1.0 if recipe.entropy.enabled else None

    def step():
        if implementation == "public":
            public_code_step(searcher, x, y, xa, ya, temp)
        else:
            searcher.search_step(x, y, xa, ya, temp, lr=recipe.optim.lr)

    return searcher, recipe, step


def public_architecture_step(searcher, xa, ya, temp) -> None:
    """The public code's first-order architecture step (``Architect.step`` with ``unrolled=False``): zero the
    architecture gradients, ``loss.backward()`` on the architecture batch, which computes the weights' gradients
    too (unused: the weight step zeroes them), and the architecture optimizer's step. The loss is eldarts' (with
    the entropy term where the recipe has it), so both steps optimise the same thing."""
    import torch.nn.functional as F

    from eldarts_cli.engines.objectives import entropy_regulariser

    searcher.a_opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(searcher.model(xa), ya)
    if temp is not None:
        loss = loss + searcher.recipe.entropy.weight * entropy_regulariser(searcher.model.alphas(), temp)
    loss.backward()
    searcher.a_opt.step()


def public_weight_step(searcher, x, y) -> None:
    """The public code's weight step: ``loss.backward()`` computes the architecture's gradients too (their alphas are
    tensors that require gradients, not module parameters, and stay in the graph); clipping covers the weights only
    (``model.parameters()`` there holds no alpha)."""
    import torch
    import torch.nn.functional as F

    searcher.w_opt.zero_grad(set_to_none=True)
    F.cross_entropy(searcher.model(x), y).backward()
    if searcher.recipe.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(searcher.weights, searcher.recipe.optim.grad_clip)
    searcher.w_opt.step()


def public_code_step(searcher, x, y, xa, ya, temp) -> None:
    """A search step as the public DARTS/PC-DARTS ``train_search.py`` runs it (first order): its architecture step,
    then its weight step, every gradient computed in both. Only for the fixed partial channels and first-order
    recipes the benchmark times (no channel sampling, no cost term, fp32)."""
    public_architecture_step(searcher, xa, ya, temp)
    public_weight_step(searcher, x, y)


def one(args: argparse.Namespace) -> dict:
    """Time one configuration in this process (called in a child process)."""
    import tempfile

    import torch

    from eldarts_cli.models.reference import ReferenceSupernet
    from eldarts_cli.models.sizes import thop_macs

    with tempfile.TemporaryDirectory() as tmp:
        searcher, recipe, step = _search_step(args, args.one, args.implementation, Path(tmp))
        cuda = searcher.device.type == "cuda"
        # a step recorded as a CUDA graph: its warm-up steps and the recording are warm-up, not timed
        warmup = args.warmup if searcher.graphs is None else max(args.warmup, searcher.graphs.warmup + 1)
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            if searcher.graphs is None:  # a recorded step's memory is taken while it is recorded, in warm-up
                torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        profile = _profile(step) if args.profile else None
        calls = profile_calls(step) if args.profile_calls else None
        # forward MACs of the same supernet, counted on the module-per-op form (thop sees nn.Conv2d modules)
        counted = ReferenceSupernet(ops=recipe.search_space.ops, num_classes=10, channels=recipe.network.channels,
                                    layers=recipe.network.layers, nodes=recipe.network.nodes,
                                    multiplier=recipe.network.multiplier, partial_channels=recipe.partial_channels.ratio,
                                    edge_coefficients=recipe.edge_coefficients.enabled)
        macs = thop_macs(counted.eval(), torch.zeros(1, 3, 32, 32)) * args.batch
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "s_per_step": median, "min": min(times), "max": max(times), "images_per_s": args.batch / median,
        "peak_mib": peak, "gflops": 2 * macs * PASSES / median / 1e9, "steps": len(times),
        "threads": torch.get_num_threads(), "device": "cuda" if cuda else "cpu",
        "channels_last": searcher.channels_last, "amp": searcher.amp, "compiled": bool(searcher.compiled),
        "recompute": searcher.recompute,
        "profile": profile, "calls": calls,
    }


def pair(args: argparse.Namespace) -> dict:
    """Both implementations in this process, their steps alternated (called in a child process): the ratio
    under the same conditions step by step, whatever else the machine does meanwhile. No peak memory (one
    process holds both)."""
    import tempfile

    import torch

    steps, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for implementation in ("eldarts", "reference"):
            searcher, _, steps[implementation] = _search_step(args, args.pair, implementation, Path(tmp) / implementation)
            times[implementation] = []
        cuda = searcher.device.type == "cuda"
        for i in range(args.warmup + args.steps):
            for implementation, step in steps.items():
                start = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times[implementation].append(time.perf_counter() - start)
    return {name: {"s_per_step": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}


def _profile(step) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    import torch

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, 100 * e.self_cpu_time_total / total) for e in events[:12]]


def profile_calls(step, top: int = 15) -> dict[str, list[dict]]:
    """One call of ``step`` with each ATen call timed on its own (a ``TorchDispatchMode``): ``"ops"``, the ``top``
    ops by summed time, and ``"calls"``, the ``top`` groups of one op and its input shapes (``L``: channels_last),
    each ``{"op", "inputs", "calls", "ms", "share"}`` (share of the summed call times of all ops).
    torch.profiler's self times misattributed on an AVX2 CPU (8 ms on a ReLU forward that took 0.67 ms timed in
    the step); this table times the calls themselves. The mode adds its own cost to each call (tens of
    microseconds: an EL-DARTS batch-32 step's ~15,000 calls summed to 2.5 s against a 1.9 s step), so small calls
    look slower than they are."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def describe(value) -> str:
        if isinstance(value, torch.Tensor):
            nhwc = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) \
                and not value.is_contiguous()
            return "x".join(map(str, value.shape)) + (" L" if nhwc else "")
        tensors = [v for v in value if isinstance(v, torch.Tensor)]
        return f"[{len(tensors)}: {describe(tensors[0])}]" if tensors else ""

    class Timer(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seconds, self.count = collections.defaultdict(float), collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            key = (func.overloadpacket.__name__,
                   ", ".join(d for d in (describe(a) for a in args[:3] if isinstance(a, (torch.Tensor, list, tuple)))
                             if d))
            self.seconds[key] += time.perf_counter() - start
            self.count[key] += 1
            return out

    timer = Timer()
    with timer:
        step()
    total = sum(timer.seconds.values()) or 1.0
    per_op, per_op_count = collections.defaultdict(float), collections.Counter()
    for key, seconds in timer.seconds.items():
        per_op[key[0]] += seconds
        per_op_count[key[0]] += timer.count[key]

    def rows(seconds: dict, count: dict, describe_key) -> list[dict]:
        ranked = sorted(seconds.items(), key=lambda item: -item[1])[:top]
        return [{**describe_key(key), "calls": count[key], "ms": 1e3 * value, "share": 100 * value / total}
                for key, value in ranked]

    return {"ops": rows(per_op, per_op_count, lambda op: {"op": op, "inputs": "(all)"}),
            "calls": rows(timer.seconds, timer.count, lambda key: {"op": key[0], "inputs": key[1]})}


def calls_tables(tables: dict[str, list[dict]]) -> list[str]:
    """Markdown lines of :func:`profile_calls`' two tables (by op, then by op and input shapes)."""
    lines = []
    for rows in (tables["ops"], tables["calls"]):
        lines += ["", "| op | inputs | calls | ms | share |", "|---|---|---|---|---|"]
        lines += [f"| {c['op']} | {c['inputs']} | {c['calls']} | {c['ms']:.1f} | {c['share']:.1f}% |" for c in rows]
    return lines


def run_limited(cmd: list[str], timeout: float | None, **kwargs) -> subprocess.CompletedProcess | None:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` in a process group of its own; ``None``
    when it ran past ``timeout`` seconds, after killing the whole group (a compile's worker processes too, which
    would otherwise keep running beside the next configuration)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def child_env() -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH`` (what was there stays: on a machine
    without package registries, bench/device-check.sh puts carried packages there)."""
    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**os.environ, "PYTHONPATH": path}


PUBLIC_LABEL = "reference, public-style step"
VARIANTS = ("eldarts", "nchw", "compiled", "graphs", "step-graph", "recompute", "reference", "public")


def variant_list(args: argparse.Namespace, names: Optional[Sequence[str]] = None) -> list[tuple[str, list[str]]]:
    """The rows of each recipe and batch (or of the variants ``names``), as ``(implementation, overrides)``:
    ``--variants`` if given, else eldarts, its compiled and recomputing forms where ``--compile`` / ``--recompute``
    ask, the reference and the reference stepped as the public code steps."""
    if names is None:
        names = args.variants.split(",") if args.variants else \
            ["eldarts"] + ["recompute"] * args.recompute + ["compiled"] * args.compile + ["reference", "public"]
    extra = {"eldarts": [], "nchw": ["runtime.channels_last=false"], "compiled": ["runtime.compile=true"],
             "graphs": ["runtime.compile=reduce-overhead"], "step-graph": ["runtime.cuda_graphs=true"],
             "recompute": ["runtime.recompute=true"],
             "reference": [], "public": []}
    return [(name if name in ("reference", "public") else "eldarts", args.set + extra[name]) for name in names]


def row_label(implementation: str, extra: list[str]) -> str:
    """A row's variant as the table names it: the implementation and what its overrides turn on."""
    if implementation == "public":
        return PUBLIC_LABEL
    return implementation + (" compiled" if "runtime.compile=true" in extra else "") \
        + (" compiled, CUDA graphs" if "runtime.compile=reduce-overhead" in extra else "") \
        + (", step as one CUDA graph" if "runtime.cuda_graphs=true" in extra else "") \
        + (" recompute" if "runtime.recompute=true" in extra else "") \
        + (" NCHW" if "runtime.channels_last=false" in extra else "")


def run_child(args: argparse.Namespace, recipe: str, batch: int, implementation: str, extra: list[str],
              mode: str = "--one", first_round: bool = True) -> dict:
    first = implementation == "eldarts" and batch == args.batches[0] and first_round and mode == "--one"
    cmd = [sys.executable, __file__, mode, recipe, "--batches", str(batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device, "--implementation", implementation,
           *(["--profile"] if args.profile and first else []),
           *(["--profile-calls"] if args.profile_calls and first else []),
           *[f"--set={item}" for item in extra]]
    limit = int(args.memory_limit * 2**30) if args.device == "cpu" else None

    def cap():  # a configuration past the limit fails to allocate instead of swapping or waking the OOM killer
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = run_limited(cmd, args.timeout, cwd=ROOT, preexec_fn=cap, env=child_env())
    if proc is None:
        return {"error": f"timed out after {args.timeout:g} s"}
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    diagnose_cuda_failure(cmd, proc, args.timeout, cwd=ROOT, env=child_env())
    return {"error": failure(proc, args.memory_limit if limit else None)}


def diagnose_cuda_failure(cmd: list[str], proc: subprocess.CompletedProcess, timeout: float | None,
                          env: dict[str, str] | None = None, **kwargs) -> None:
    """For a configuration that failed with a CUDA error (not out of memory): its traceback on stderr, then the
    traceback of one rerun with ``CUDA_LAUNCH_BLOCKING=1``, which names the kernel that failed (CUDA reports an
    error at a later synchronisation, so the first traceback points past it). Both benchmarks; the row keeps the
    first run's error."""
    if "CUDA error" not in proc.stderr or failure(proc).startswith("out of memory"):
        return

    def tail(text: str) -> str:
        return "\n".join("    " + line for line in text.strip().splitlines()[-30:])

    print(f"CUDA error in {' '.join(cmd[1:])}; its stderr (last 30 lines):\n{tail(proc.stderr)}", file=sys.stderr)
    rerun = run_limited(cmd, timeout, env={**(env or os.environ), "CUDA_LAUNCH_BLOCKING": "1"}, **kwargs)
    what = "timed out" if rerun is None else f"exit {rerun.returncode}; stderr (last 30 lines):\n{tail(rerun.stderr)}"
    print(f"the same with CUDA_LAUNCH_BLOCKING=1: {what}", file=sys.stderr, flush=True)


#: A traceback's closing line (``torch.AcceleratorError: CUDA error: ...``), as opposed to the advice PyTorch prints
#: after a CUDA error ("Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.", whatever the error).
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: .*)?$")


def failure(proc: subprocess.CompletedProcess, limit_gib: float | None = None) -> str:
    """What a configuration's failed process met, as its row says it (both benchmarks): out of memory (killed, or
    an allocation failed), a refusal by eldarts' memory check, or else the last exception line on stderr (its
    last line where there is none)."""
    text = proc.stderr.lower()
    if proc.returncode in (-9, 137) or "out of memory" in text or "can't allocate" in text or "memoryerror" in text:
        return f"out of memory (limit {limit_gib:g} GiB)" if limit_gib else "out of memory"
    lines = [line.strip() for line in proc.stderr.strip().splitlines() if line.strip()]
    named = [line for line in lines if EXCEPTION_LINE.match(line)]
    last = named[-1] if named else lines[-1] if lines else f"exit code {proc.returncode}"
    if "ResourceError:" in last:  # eldarts' own memory check refused it before it ran
        return "refused by eldarts' memory check: " + last.split("ResourceError:", 1)[1].strip()
    return f"failed: {last}"


def combine_rounds(runs: dict[str, list[dict]], batch: int, baseline: str = "reference",
                   others: Sequence[str] = ()) -> dict[str, dict]:
    """One result per variant from its rounds: the median of the rounds' medians, the extremes of all steps, the
    highest peak; ``speedups``: per round, the baseline's step time (the row labelled ``baseline``) over this
    variant's in the same round (the speed-up reported is their median); ``speedups_vs``: the same against each
    row of ``others`` that ran (the public-style step beside the reference)."""
    reference = runs.get(baseline, [])

    def ratios(base: list[dict], rounds: list[dict]) -> list[float]:
        return [ref["s_per_step"] / r["s_per_step"] for r, ref in zip(rounds, base) if "s_per_step" in ref]

    results = {}
    for label, rounds in runs.items():
        failed = next((r for r in rounds if "error" in r), None)
        if failed is not None:
            results[label] = failed
            continue
        median = statistics.median(r["s_per_step"] for r in rounds)
        work = statistics.median(r["gflops"] * r["s_per_step"] for r in rounds)  # GFLOP per step (the same each round)
        results[label] = {**rounds[0], "s_per_step": median, "min": min(r["min"] for r in rounds),
                          "max": max(r["max"] for r in rounds), "images_per_s": batch / median,
                          "peak_mib": max(r["peak_mib"] for r in rounds), "gflops": work / median,
                          "speedups": ratios(reference, rounds),
                          "speedups_vs": {o: ratios(runs[o], rounds) for o in others if o in runs and o != baseline}}
    return results


def _median_ratio(ratios: Optional[list[float]], rounds: int = 1, per_round: bool = True) -> str:
    """A speed-up cell: the median of the same-round ratios, each round's where there are several (``per_round``),
    and how many rounds gave one where the baseline failed in others."""
    if not ratios:
        return "-"
    each = f" ({', '.join(f'{v:.2f}x' for v in ratios)})" if per_round and len(ratios) > 1 else ""
    short = f" ({len(ratios)} of {rounds} rounds)" if len(ratios) < rounds else ""
    return f"{statistics.median(ratios):.2f}x{each}{short}"


def machine(device: str, threads: int) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}; torch {torch.__version__}"
    from eldarts_cli.core.device import cpu_label

    return f"{cpu_label(detail=True)}, {os.cpu_count()} cores, {threads} torch threads; torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="el-darts,pc-darts,darts", help="comma list of " + ", ".join(RECIPES))
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time eldarts with runtime.compile=true")
    ap.add_argument("--recompute", action="store_true",
                    help="also time eldarts with runtime.recompute=true (activations recomputed in the backward pass)")
    ap.add_argument("--profile", action="store_true", help="top ops of the eldarts step (torch.profiler)")
    ap.add_argument("--profile-calls", action="store_true",
                    help="top ATen calls of the eldarts step by op and input shapes, each call timed on its own")
    ap.add_argument("--memory-limit", type=float, default=16.0, help="CPU: GiB of address space per configuration")
    ap.add_argument("--set", action="append", default=[],
                    help="recipe override for every row (the reference rows then force their own implementation, "
                    "layout and precision)")
    ap.add_argument("--write", help="also write the table to this Markdown file")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration's processes this many times, in alternating order (A B, B A, ...); "
                    "the speed-up is the median of the rounds' ratios")
    ap.add_argument("--interleaved", action="store_true",
                    help="also time both implementations in one process, steps alternated (the ratio under the "
                    "same conditions step by step)")
    ap.add_argument("--interleaved-only", action="store_true",
                    help="only the table of both implementations in one process (no per-process rows, no peak memory)")
    ap.add_argument("--variants", help="comma list of the rows per recipe and batch, of " + ", ".join(VARIANTS)
                    + " (default: eldarts, the rows --recompute and --compile add, reference, public)")
    ap.add_argument("--baseline", default="reference",
                    help="the variant the speed-up and memory columns divide by (one of --variants; default: reference)")
    ap.add_argument("--timeout", type=float,
                    help="seconds per configuration's process; one past it is reported as timed out")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--pair", help=argparse.SUPPRESS)
    ap.add_argument("--implementation", default="eldarts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    unknown = [v for v in (args.variants or "").split(",") if v and v not in VARIANTS]
    if unknown or args.variants == "":
        ap.error(f"--variants: {', '.join(unknown) or 'empty'}; choose from {', '.join(VARIANTS)}")
    labels = {name: row_label(*variant) for name, variant in zip(VARIANTS, variant_list(args, VARIANTS))}
    if args.baseline not in labels:
        ap.error(f"--baseline: {args.baseline}; choose from {', '.join(VARIANTS)}")
    baseline = labels[args.baseline]
    if args.one:
        args.batch = args.batches[0]
        print(json.dumps(one(args)))
        return
    if args.pair:
        args.batch = args.batches[0]
        print(json.dumps(pair(args)))
        return

    rows, profile, calls = [], None, None
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for key in [] if args.interleaved_only else args.recipes.split(","):
        name = RECIPES[key][0]
        for batch in args.batches:
            variants = variant_list(args)
            runs: dict[str, list[dict]] = {}
            for r in range(args.rounds):
                # rounds alternate the order (A B, B A, ...), so that the machine's drift hits both alike
                for implementation, extra in variants if r % 2 == 0 else variants[::-1]:
                    label = row_label(implementation, extra)
                    round_note = f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""
                    print(f"{name} batch {batch}: {label}{round_note} ...", file=sys.stderr, flush=True)
                    result = run_child(args, key, batch, implementation, extra, first_round=r == 0)
                    runs.setdefault(label, []).append(result)
                    if result.get("profile"):
                        profile = (name, batch, result["profile"])
                    if result.get("calls"):
                        calls = (name, batch, result["calls"])
            rows.append((name, batch, combine_rounds(runs, batch, baseline, others=[PUBLIC_LABEL])))
    alternated = []
    if args.interleaved or args.interleaved_only:
        for key in args.recipes.split(","):
            for batch in args.batches:
                print(f"{RECIPES[key][0]} batch {batch}: both implementations, steps alternated ...", file=sys.stderr,
                      flush=True)
                alternated.append((RECIPES[key][0], batch, run_child(args, key, batch, "eldarts", args.set, "--pair")))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    import torch

    threads = next((r["threads"] for *_, res in rows for r in res.values() if "threads" in r), torch.get_num_threads())
    public_ran = any(PUBLIC_LABEL in results for *_, results in rows)
    lines = [
        f"Search step (architecture step + weight step), 32x32 random images, C=16 and 8 cells unless the overrides "
        f"below change them; median of "
        f"{args.steps} steps after {args.warmup} warm-up steps; "
        + ("both implementations in one process per configuration, steps alternated (no peak memory)."
           if args.interleaved_only else "every configuration in its own process"
           + (f"; {args.rounds} rounds, in alternating order: s/step is the median of the rounds' medians, the "
              f"speed-up the median of the rounds' ratios ({baseline} over variant, same round)." if args.rounds > 1
              else ".")),
        f"Machine: {machine(args.device, threads)}; Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}",
        f"Load average (1 min) before {load_before:.2f}, after {load_after:.2f}" if load_before is not None else "",
        f"overrides: {args.set or 'none (defaults)'}; reference = network.implementation=reference, "
        "NCHW fp32 (the public code's way), stepped by eldarts' search step (gradients only for what each phase "
        "updates)" + (f"; {PUBLIC_LABEL} = the same supernet stepped as the public code's train_search.py steps it "
                      "(loss.backward() over every gradient in both phases; the same updates; GFLOP/s counts the "
                      "same nominal work in every row)." if public_ran else "."),
    ]
    # the public-style step's column, where that row ran and is not the baseline
    second = [PUBLIC_LABEL] if baseline != PUBLIC_LABEL and public_ran else []
    if rows:
        extra_column = (" speed-up per round |", "---|") if args.rounds > 1 else ("", "")
        lines += ["", "| recipe | batch | variant | layout, amp, memory | s/step | min-max | images/s | peak MiB | "
                  f"GFLOP/s | speed-up vs {baseline} | memory vs {baseline} |" + extra_column[0]
                  + "".join(f" speed-up vs {o} |" for o in second),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + extra_column[1] + "---|" * len(second)]
    for name, batch, results in rows:
        ref = results.get(baseline, {})
        for label, r in results.items():
            if "error" in r:
                lines.append(f"| {name} | {batch} | {label} | - | {r['error']} | | | | | | |"
                             + " |" * (args.rounds > 1) + " |" * len(second))
                continue
            layout = ("channels_last" if r["channels_last"] else "NCHW") + f", {r['amp']}" \
                + (", recompute" if r.get("recompute") else "")
            speed = _median_ratio(r.get("speedups"), args.rounds, per_round=False)
            memory = f"{100 * r['peak_mib'] / ref['peak_mib']:.0f}%" if "peak_mib" in ref else "-"
            per_round = f" {', '.join(f'{v:.2f}x' for v in r.get('speedups', []))} |" if args.rounds > 1 else ""
            lines.append(
                f"| {name} | {batch} | {label} | {layout} | {r['s_per_step']:.3f} | {r['min']:.3f}-{r['max']:.3f} | "
                f"{r['images_per_s']:.1f} | {r['peak_mib']:.0f} | {r['gflops']:.1f} | {speed} | {memory} |{per_round}"
                + "".join(f" {_median_ratio(r.get('speedups_vs', {}).get(o), args.rounds)} |" for o in second)
            )
    if alternated:
        lines += ["", f"The same configurations with both implementations in one process, their steps alternated "
                  f"(eldarts, reference, eldarts, ...; median of {args.steps} steps each after {args.warmup} warm-up "
                  "steps each):", "",
                  "| recipe | batch | eldarts s/step | min-max | reference s/step | min-max | speed-up vs reference |",
                  "|---|---|---|---|---|---|---|"]
        for name, batch, r in alternated:
            if "error" in r:
                lines.append(f"| {name} | {batch} | {r['error']} | | | | |")
                continue
            e, ref = r["eldarts"], r["reference"]
            lines.append(f"| {name} | {batch} | {e['s_per_step']:.3f} | {e['min']:.3f}-{e['max']:.3f} | "
                         f"{ref['s_per_step']:.3f} | {ref['min']:.3f}-{ref['max']:.3f} | "
                         f"{ref['s_per_step'] / e['s_per_step']:.2f}x |")
    if profile:
        name, batch, ops = profile
        lines += ["", f"Top ops of the eldarts step ({name}, batch {batch}; torch.profiler, share of self CPU time):", ""]
        lines += ["| op | share |", "|---|---|"] + [f"| {op} | {share:.1f}% |" for op, share in ops]
    if calls:
        name, batch, tables = calls
        lines += ["", f"Top ATen ops, then calls, of the eldarts step ({name}, batch {batch}; each call timed on "
                  "its own, grouped by op, then by op and input shapes, L = channels_last; share of the summed call "
                  "times):"]
        lines += calls_tables(tables)
    text = "\n".join(line for line in lines if line is not None)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
