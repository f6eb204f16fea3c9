"""Is bf16 autocast safe for a search? Architecture gradients and trajectories against fp32, measured.

1. One architecture gradient (alphas and DCSS coefficients) of the EL-DARTS
   recipe's supernet (batch 64, random images, after 3 weight steps), in fp32
   and under bf16 autocast: cosine similarity, relative L2 error and the share
   of components with the same sign.
2. Trajectories: 12 search steps (architecture + weight step, random
   partial channels off so that only precision differs) of a small supernet
   on scikit-learn's digits from one initialisation, each variant against an
   fp32 NCHW run: the change of the architecture weights, as cosine and
   relative L2 error, and whether the genotype is the same. fp32 in
   channels_last (the same maths summed in another order) gives the noise
   floor.

    python bench/bench_amp.py                 # CPU (bf16 autocast on the CPU)
    python bench/bench_amp.py --device cuda   # what bench/device-check.sh runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "C=4, 3 cells, 2 nodes, digits 8x8": {
        "name": "amp-check", "seed": 3,
        "data": {"dataset": "digits", "image_size": 8, "batch_size": 16, "limit": 512, "crop_padding": 1},
        "search_space": {"ops": "ess"},
        "network": {"channels": 4, "layers": 3, "nodes": 2, "multiplier": 2},
        "partial_channels": {"ratio": 2, "sampling": "fixed"},
        "arch_optim": {"lr": 0.01},
        "search": {"epochs": 2, "warmup_epochs": 0},
    },
    "C=8, 5 cells, 4 nodes, digits 16x16": {
        "name": "amp-check", "seed": 3,
        "data": {"dataset": "digits", "image_size": 16, "batch_size": 32, "limit": 1024, "crop_padding": 2},
        "search_space": {"ops": "ess"},
        "network": {"channels": 8, "layers": 5, "nodes": 4},
        "partial_channels": {"ratio": 2, "sampling": "fixed"},
        "arch_optim": {"lr": 0.003},
        "search": {"epochs": 2, "warmup_epochs": 0},
    },
}


def gradient_check(device: str, batch: int = 64, toy: bool = False) -> dict:
    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.core.device import autocast
    from eldarts_cli.engines.search import Searcher

    recipe = load_recipe(ROOT / "recipes/search-cifar10.yaml", SearchRecipe, [
        "data.dataset=fake", f"data.batch_size={batch}", f"data.limit={4 * batch}", "search.epochs=2",
        "search.warmup_epochs=0",
        f"runtime.device={device}", "partial_channels.sampling=fixed",
        *(["network.channels=8", "network.layers=5"] if toy else [])])
    with tempfile.TemporaryDirectory() as tmp:
        searcher = Searcher(recipe, Path(tmp))
        (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
        for _ in range(3):
            searcher._weight_step(x, y)
        grads = {}
        for amp in ("none", "bf16"):
            searcher.model.zero_grad(set_to_none=True)
            with autocast(searcher.device, amp):
                loss = F.cross_entropy(searcher.model(xa), ya)
            loss.backward(inputs=searcher.model.arch_parameters())
            grads[amp] = torch.cat([p.grad.flatten().float() for p in searcher.model.arch_parameters()])
    a, b = grads["none"], grads["bf16"]
    return {"cos": F.cosine_similarity(a, b, dim=0).item(), "rel": ((a - b).norm() / a.norm()).item(),
            "signs": (a.sign() == b.sign()).float().mean().item()}


def trajectory(device: str, size: dict, runtime: dict, steps: int = 12):
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    recipe = SearchRecipe.model_validate({**size, "runtime": {"device": device, "threads": 1, **runtime}})
    with tempfile.TemporaryDirectory() as tmp:
        searcher = Searcher(recipe, Path(tmp))
        start = torch.cat([p.detach().flatten().clone() for p in searcher.model.arch_parameters()])
        batches = zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0))
        for step in range(steps):
            (x, y), (xa, ya) = next(batches)
            searcher.search_step(x, y, xa, ya, 1.0, recipe.optim.lr, step=step)
        end = torch.cat([p.detach().flatten() for p in searcher.model.arch_parameters()])
        return (end - start).float().cpu(), searcher.model.genotype()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", help="also write the report to this Markdown file")
    ap.add_argument("--quick", action="store_true", help="toy sizes (tests): the gradient at batch 8 on a C=8, "
                    "5-cell supernet, the smallest trajectory supernet, 3 steps")
    args = ap.parse_args()
    from eldarts_cli.core.device import device_name, resolve_device

    name = device_name(resolve_device(args.device))
    g = gradient_check(args.device, batch=8 if args.quick else 64, toy=args.quick)
    sizes = dict(list(SIZES.items())[:1]) if args.quick else SIZES
    steps = 3 if args.quick else 12
    lines = [
        f"bf16 autocast against fp32 on {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"1. One architecture gradient (EL-DARTS recipe's supernet{', C=8, 5 cells' if args.quick else ''}, "
        f"batch {8 if args.quick else 64}):", "",
        "| cosine | relative L2 error | same sign |", "|---|---|---|",
        f"| {g['cos']:.4f} | {100 * g['rel']:.1f}% | {100 * g['signs']:.1f}% |", "",
        f"2. Architecture-weight change over {steps} search steps, against an fp32 NCHW run from the same start:", "",
        "| supernet | variant | cosine | relative L2 error | same genotype |", "|---|---|---|---|---|",
    ]
    for size_label, size in sizes.items():
        base, base_genotype = trajectory(args.device, size, {"channels_last": False, "amp": "none"}, steps)
        for label, runtime in (
            ("fp32, channels_last (noise floor: another summation order)", {"channels_last": True, "amp": "none"}),
            ("bf16 weight steps, fp32 architecture steps", {"channels_last": False, "amp": "bf16"}),
            ("bf16 weight and architecture steps", {"channels_last": False, "amp": "bf16", "arch_amp": True}),
        ):
            delta, genotype = trajectory(args.device, size, runtime, steps)
            cos = F.cosine_similarity(base, delta, dim=0).item()
            rel = ((delta - base).norm() / base.norm()).item()
            same = "yes" if genotype == base_genotype else "no"
            lines.append(f"| {size_label} | {label} | {cos:.4f} | {100 * rel:.1f}% | {same} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
