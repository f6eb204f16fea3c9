"""Evaluation-training throughput: DARTS_V2 trained from scratch, as ``eldarts evaluate`` trains it.

    python bench/bench_eval.py                 # CPU: both sizes, contiguous vs channels_last
    python bench/bench_eval.py --device cuda   # CUDA: amp + channels_last (the defaults) vs fp32
    python bench/bench_eval.py --write bench/results-eval-cpu.md

Sizes: the paper's CIFAR network (C=36, 20 cells) and the search-sized one
(C=16, 8 cells); batch 96 of 32x32 images, no auxiliary head, drop path 0.2,
SGD + grad clip, the same ``TrainStep`` and tensor loader (random crop, flip,
cutout on tensors) as the training loop. Warm-up steps are not timed. Each
configuration runs in its own process, so peak memory (CPU: max RSS from
``resource.getrusage``; CUDA: ``torch.cuda.max_memory_allocated``) is its own.
Each is repeated ``--repeats`` times; the table gives the best and the median.

"contiguous" is the memory layout the reference code trains in. On CPU the
default stays fp32 (bf16 autocast changes the numerics; ``runtime.amp=bf16``
opts in).

Reference (the authors' DARTS code, measured on this machine kind): 8.9 images/s
at C=36/20 cells and 72 images/s at C=16/8 cells on CPU. Target: 1.3x.
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

REFERENCE = {(36, 20): 8.9, (16, 8): 72.0}
SIZES = ((36, 20), (16, 8))


def one(args: argparse.Namespace) -> dict:
    """Time one configuration in this process."""
    import resource

    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.core.device import grad_scaler, resolve_device
    from eldarts_cli.data.datasets import load_images
    from eldarts_cli.data.loaders import TensorLoader
    from eldarts_cli.engines.evaluate import TrainStep, make_optimizer
    from eldarts_cli.models.genotypes import GENOTYPES
    from eldarts_cli.models.network import build_network

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
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
    images = load_images(recipe.data, "train")
    loader = TensorLoader(images, args.batch, mean=[0.5] * 3, std=[0.25] * 3, device=device, augment=True,
                          cutout=16, channels_last=args.channels_last, drop_last=True)
    step = TrainStep(model, make_optimizer(recipe, model), grad_scaler(device, args.amp), device=device,
                     amp=args.amp, grad_clip=recipe.optim.grad_clip)

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
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(*next(stream))
    float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images_per_s": args.steps * args.batch / seconds, "peak_mb": peak, "seconds": seconds}


def machine() -> str:
    import torch

    from eldarts_cli.core.device import cpu_model

    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", default=None, help="also write the output (Markdown) to this file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return

    cuda = args.device.startswith("cuda")
    if cuda:
        variants = [("bf16 amp, channels_last (default)", True, "bf16"),
                    ("fp32, channels_last", True, "none"), ("fp32, contiguous", False, "none")]
    else:
        variants = [("fp32, channels_last (default)", True, "none"), ("fp32, contiguous", False, "none"),
                    ("bf16 amp, channels_last (opt-in)", True, "bf16")]
    lines = [
        "# Evaluation-training throughput (bench/bench_eval.py)",
        "",
        f"Machine: {machine()}",
        f"Load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)",
        f"Network: DARTS_V2, batch {args.batch} of 32x32, no auxiliary head, drop path 0.2, SGD + clip 5; "
        f"{args.repeats} runs per row, warm-up steps excluded.",
        "Reference: the authors' DARTS code on this machine kind, as quoted in issue 3 (not re-measured here).",
        "",
        "| C | cells | variant | images/s best | images/s median | reference | best / reference | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for channels, layers in SIZES:
        steps = args.steps or (3 if channels == 36 and not cuda else 10 if not cuda else 30)
        for name, channels_last, amp in variants:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--one", "--device", args.device, "--channels", str(channels),
                       "--layers", str(layers), "--batch", str(args.batch), "--amp", amp, "--steps", str(steps),
                       "--warmup", str(args.warmup)]
                if channels_last:
                    cmd.append("--channels-last")
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
            speeds = [r["images_per_s"] for r in runs]
            best, median = max(speeds), statistics.median(speeds)
            ref = REFERENCE.get((channels, layers)) if not cuda else None
            ratio = f"{best / ref:.2f}x" if ref else "-"
            line = (f"| {channels} | {layers} | {name} | {best:.1f} | {median:.1f} | {ref or '-'} | {ratio} | "
                    f"{max(r['peak_mb'] for r in runs):.0f} |")
            lines.append(line)
            print(line, flush=True)
    tail = f"\nLoad average after: {os.getloadavg()[0]:.2f}"
    lines.append(tail)
    print(tail)
    if args.write:
        with open(args.write, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
