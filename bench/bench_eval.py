"""Evaluation-training throughput: eldarts' defaults beside a plain DARTS-style run, measured in one run.

The network is DARTS_V2 trained from scratch as ``eldarts evaluate`` trains it
(the same ``TrainStep`` and tensor loader: random crop, flip, cutout on
tensors; SGD + clip 5, drop path 0.2, no auxiliary head), at the paper's size
(C=36, 20 cells) and the search size (C=16, 8 cells), batch 96 of 32x32.

* ``reference``: the plain DARTS-style run, one module per op, contiguous
  (NCHW) fp32 tensors, eager, with the public DARTS code's modules
  (``models.reference.with_public_modules``: ``nn.MaxPool2d``, ``nn.Conv2d``
  for the stride-2 and dilated convolutions, ``nn.BatchNorm2d``): how the
  public DARTS code trains;
* ``reference, eldarts' modules``: the same run with eldarts' faster
  pooling, convolution and BatchNorm modules (the forward stays plain): a
  baseline that shares eldarts' kernel-level work, so its speed-up column
  shows what the rest (layout, shared ReLUs, fusion) gains;
* ``eldarts``: the defaults ``runtime.amp: auto`` and ``runtime.channels_last``
  resolve to on this device;
* a third row: ``runtime.compile`` on CUDA; on a CPU, fp32 where bf16 is the
  default (native bf16), else the bf16 opt-in.

Every configuration runs in its own process (peak memory is its own: CPU max
RSS, CUDA ``max_memory_allocated``), with the malloc setting ``eldarts evaluate``
gives a CPU run (``runtime.allocator: auto``, ``core/allocator.py``: freed memory
kept for the next step) in every row, as ``bench_search.py`` gives both of its
implementations, so a ratio is the implementation's alone (``--allocator
system``: glibc's defaults in every row); rounds alternate the configurations, so
the machine's drift hits all alike; the table gives medians over rounds and
each one's speed-up over each reference's median.

    python bench/bench_eval.py                               # CPU
    python bench/bench_eval.py --device cuda --write bench/results-eval-cuda.md
    python bench/bench_eval.py --defaults-only               # the references and eldarts' defaults only
    python bench/bench_eval.py --profile-calls               # adds where eldarts' step goes, by ATen call
    python bench/bench_eval.py --allocator system            # every row on glibc's malloc defaults
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SIZES = ((36, 20), (16, 8))


def one(args: argparse.Namespace) -> dict:
    """Time one configuration in this process."""
    import resource

    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.core import allocator
    from eldarts_cli.core.device import grad_scaler, resolve_device
    from eldarts_cli.data.datasets import load_images
    from eldarts_cli.data.loaders import TensorLoader
    from eldarts_cli.engines.evaluate import TrainStep, make_optimizer
    from eldarts_cli.models.genotypes import GENOTYPES
    from eldarts_cli.models.network import build_network

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kept = allocator.configure(args.allocator, device.type)  # before the first large tensor, as evaluate does
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    recipe = load_recipe(None, EvalRecipe, [
        f"network.channels={args.channels}", f"network.layers={args.layers}", "network.auxiliary=false",
        f"data.batch_size={args.batch}", "data.dataset=fake", f"data.limit={args.batch * 4}",
    ])
    torch.manual_seed(0)
    model = build_network("cifar", genotype=GENOTYPES.get("DARTS_V2"), channels=args.channels,
                          layers=args.layers, auxiliary=False)
    model.drop_path_prob = recipe.network.drop_path
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    if args.plain:  # the DARTS formulation: every op with its own ReLU (models/reference.py)
        from eldarts_cli.models.reference import PlainEvalForward, with_public_modules

        model = PlainEvalForward(with_public_modules(model) if args.public_modules else model)
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
    images = load_images(recipe.data, "train")
    loader = TensorLoader(images, args.batch, mean=[0.5] * 3, std=[0.25] * 3, device=device, augment=True,
                          cutout=16, channels_last=args.channels_last, drop_last=True)
    step = TrainStep(forward, make_optimizer(recipe, model), grad_scaler(device, args.amp), device=device,
                     amp=args.amp, grad_clip=recipe.optim.grad_clip, autocast_cache=not args.graphs)
    if args.graphs:  # runtime.cuda_graphs: the step recorded as one CUDA graph, replayed (engines/graphs.py)
        from eldarts_cli.engines.graphs import step_graph

        graph, eager = step_graph(True, device, "evaluation", args.amp, distributed=False), step

        def step(x, y):
            return graph(0, eager, (x, y))

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    stream = batches()
    for _ in range(args.warmup):
        loss, _ = step(*next(stream))
    if device.type == "cuda":
        torch.cuda.synchronize()
        if not args.graphs:  # a recorded step's memory is taken while it is recorded, in warm-up
            torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(*next(stream))
    float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    calls = None
    if args.profile_calls:  # one more step, each ATen call timed (bench_search.profile_calls)
        from bench_search import profile_calls

        calls = profile_calls(lambda: step(*next(stream)))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images_per_s": args.steps * args.batch / seconds, "peak_mb": peak, "seconds": seconds, "calls": calls,
            "freed_memory_kept": kept}


def machine() -> str:
    import torch

    from eldarts_cli.core.device import cpu_label

    cpu = cpu_label(detail=True)
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"Python {platform.python_version()}")


REFERENCE = "reference: plain DARTS-style, DARTS' modules, NCHW fp32"
SHARED_REFERENCE = "reference, eldarts' modules: plain forward, NCHW fp32"


def variant_rows(device_type: str, amp: str, channels_last: bool, defaults_only: bool = False,
                 compiled_only: bool = False, compile_mode: str | None = None) -> list[tuple]:
    """The table's rows as ``(name, channels_last, amp, compiled, plain forward, public modules)``: the two
    references and eldarts' defaults (``amp`` and ``channels_last`` as resolved for the device), then what the
    defaults are weighed against there: on CUDA fp32 and NCHW fp32 (what each default costs; the compiled row is
    device-check's own step, ``compiled_only``), on a CPU the bf16 opt-in, or fp32 where bf16 is the default. The
    compiled row names ``compile_mode`` where one is given."""
    defaults = f"eldarts defaults ({'channels_last' if channels_last else 'NCHW'}, {'fp32' if amp == 'none' else amp})"
    compiled_row = ("eldarts + runtime.compile" + (f": {compile_mode}" if compile_mode else ""), channels_last, amp,
                    True, False, False)
    if compiled_only:  # on CUDA first the step as one CUDA graph of the eager kernels (nothing to compile)
        graph_row = ("eldarts + runtime.cuda_graphs", channels_last, amp, "graphs", False, False)
        return ([graph_row] if device_type == "cuda" else []) + [compiled_row]
    variants = [(REFERENCE, False, "none", False, True, True), (SHARED_REFERENCE, False, "none", False, True, False),
                (defaults, channels_last, amp, False, False, False)]
    fp32 = ("eldarts in fp32 (runtime.amp: none)", channels_last, "none", False, False, False)
    if device_type == "cuda":  # the first GPU run: the defaults at 0.77x of NCHW fp32, neither setting timed alone
        more = [fp32, ("eldarts in NCHW fp32 (runtime.channels_last: false, runtime.amp: none)", False, "none",
                       False, False, False)]
    elif amp == "none":
        more = [("eldarts + bf16 autocast (runtime.amp: bf16)", channels_last, "bf16", False, False, False)]
    else:  # bf16 is the default here: show what fp32 costs and gains
        more = [fp32]
    return variants + ([] if defaults_only else more)


def run_row(cmd: list[str], timeout: float | None) -> dict:
    """One row's process (``--one``): its result, or ``{"error": ...}`` when it timed out or failed."""
    from bench_search import diagnose_cuda_failure, failure, run_limited

    proc = run_limited(cmd, timeout)
    if proc is None:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode:
        diagnose_cuda_failure(cmd, proc, timeout)
        return {"error": failure(proc)}
    return json.loads(proc.stdout)


def _ran(rows: list[dict]) -> list[dict]:
    """A row's rounds that ran; the first failure alone if none did."""
    ok = [r for r in rows if "error" not in r]
    return ok or rows[:1]


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="36x20,16x8", help="CxCELLS list")
    parser.add_argument("--write", default=None, help="also write the output (Markdown) to this file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                        help="torch.compile's mode for the compiled row (runtime.compile's values; reduce-overhead "
                             "replays CUDA graphs on CUDA)")
    parser.add_argument("--graphs", action="store_true", help=argparse.SUPPRESS)  # a row's: runtime.cuda_graphs
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--public-modules", action="store_true")
    parser.add_argument("--profile-calls", action="store_true",
                        help="also time each ATen call of one eldarts step (first round, each size), by op and shapes")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--allocator", choices=("auto", "system"), default="auto",
                        help="malloc setting of every row (runtime.allocator): auto, as eldarts evaluate runs on the "
                             "CPU (freed memory kept for the next step); system: glibc's defaults")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float,
                        help="seconds per row's process; one past it (or failing) is reported in its row")
    parser.add_argument("--compiled-only", action="store_true",
                        help="only eldarts' defaults with runtime.compile, and on CUDA first with "
                             "runtime.cuda_graphs (bench/device-check.sh's last step)")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the references and eldarts' defaults (without the bf16 opt-in row, which takes "
                             "minutes per step at C=36 on a CPU without native bf16; on CUDA, without the fp32 and "
                             "NCHW fp32 rows)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return

    import torch

    from eldarts_cli.core.device import resolve_device, resolve_precision

    device = resolve_device(args.device)
    amp, channels_last = resolve_precision("auto", None, device, search=False)
    variants = variant_rows(device.type, amp, channels_last, args.defaults_only, args.compiled_only,
                            args.compile_mode)
    defaults = next((name for name, *_ in variants if name.startswith("eldarts defaults")), None)  # profiled row
    lines = [
        "Evaluation-training throughput (bench/bench_eval.py)",
        "",
        f"Machine: {machine()}",
        f"Load average before: {os.getloadavg()[0]:.2f}",
        f"Network: DARTS_V2, batch {args.batch} of 32x32, no auxiliary head, drop path 0.2, SGD + clip 5; "
        f"medians over {args.rounds} alternating rounds, warm-up steps excluded; {time.strftime('%Y-%m-%d %H:%M')}.",
        f"malloc: runtime.allocator={args.allocator} in every row"
        f"{' (freed memory kept for the next step)' if args.allocator == 'auto' else ' (glibc defaults)'}.",
        "",
        "| C | cells | variant | images/s (median) | per round | speed-up vs reference | vs reference, eldarts' modules "
        "| peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    kept: list[bool] = []
    for size in args.sizes.split(","):
        channels, layers = (int(v) for v in size.split("x"))
        steps = args.steps or (3 if channels == 36 and device.type == "cpu" else 10 if device.type == "cpu" else 30)
        runs: dict[str, list] = {name: [] for name, *_ in variants}
        calls = None
        for round_ in range(args.rounds):
            for name, cl, variant_amp, compiled, plain, public in variants:
                cmd = [sys.executable, __file__, "--one", "--device", args.device, "--channels", str(channels),
                       "--layers", str(layers), "--batch", str(args.batch), "--amp", variant_amp,
                       "--steps", str(steps), "--warmup", str(args.warmup + (3 if compiled else 0)),
                       "--allocator", args.allocator]
                cmd += ["--channels-last"] if cl else []
                cmd += (["--graphs"] if compiled == "graphs" else
                        ["--compile"] + (["--compile-mode", args.compile_mode] if args.compile_mode else [])
                        if compiled else [])
                cmd += ["--plain"] if plain else []
                cmd += ["--public-modules"] if public else []
                cmd += ["--threads", str(args.threads)] if args.threads else []
                profiled = args.profile_calls and round_ == 0 and name == defaults
                cmd += ["--profile-calls"] if profiled else []
                result = run_row(cmd, args.timeout)
                runs[name].append(result)
                if "error" not in result:
                    kept.append(result["freed_memory_kept"])
                    calls = result["calls"] if profiled else calls
        ran = {name: _ran(rows) for name, rows in runs.items()}
        medians = {name: None if "error" in rows[0] else statistics.median(r["images_per_s"] for r in rows)
                   for name, rows in ran.items()}
        ref, shared = medians.get(REFERENCE), medians.get(SHARED_REFERENCE)
        for name, *_ in variants:
            rows = ran[name]
            if "error" in rows[0]:
                line = f"| {channels} | {layers} | {name} | {rows[0]['error']} | | | | |"
            else:
                speeds, median = [r["images_per_s"] for r in rows], medians[name]
                line = (f"| {channels} | {layers} | {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in speeds)} | "
                        f"{_ratio(median, ref)} | {_ratio(median, shared)} | "
                        f"{max(r['peak_mb'] for r in rows):.0f} |")
            lines.append(line)
            print(line, flush=True)
        if calls:
            from bench_search import calls_tables

            table = [f"\nWhere eldarts' step goes at C={channels}, {layers} cells (one step, each ATen call timed on "
                     "its own, by op, then by op and input shapes, L = channels_last; share of the summed call "
                     "times):"]
            table += calls_tables(calls)
            lines += table + [""]
            print("\n".join(table) + "\n", flush=True)
    tail = f"\nLoad average after: {os.getloadavg()[0]:.2f}"
    if args.allocator == "auto" and device.type == "cpu" and kept:
        tail += f"; freed memory kept in {sum(kept)} of {len(kept)} processes"
    lines.append(tail)
    print(tail)
    if args.write:
        with open(args.write, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
