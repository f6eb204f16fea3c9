"""Latency prediction error of the hardware-aware cost model (``models/cost.py``) on one device.

Measures a cost table for an evaluation recipe's network (the seven DARTS ops
but ``none``, as ``eldarts profile-ops --table`` does), then for each genotype
compares the predicted latency (the sum of its table entries) with a timed
forward of the whole network on the same device, batch, dtype and threads.
One JSON line per genotype; the README's tables of prediction error came
from this script.

    python bench/cost_prediction.py recipes/eval-cifar10.yaml DARTS_V2 PC_DARTS runs/c10
    python bench/cost_prediction.py recipes/eval-quick.yaml DARTS_V2 --device cuda --batch 32
    python bench/cost_prediction.py recipes/eval-quick.yaml DARTS_V2 --cpu-time   # one thread, CPU time

``--cpu-time`` times table and network with the thread's CPU time instead of
wall time (CPU, one thread only), which other processes on a shared machine
cannot inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eldarts_cli.engines.cost import (  # noqa: E402
    evaluation_layout, load_evaluation_recipe, measure_latency, profile_network,
)
from eldarts_cli.models.cost import CostModel, build_layout_network  # noqa: E402
from eldarts_cli.models.genotypes import load_genotype  # noqa: E402
from eldarts_cli.models.spaces import DARTS_SPACE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="evaluation recipe whose network is priced")
    parser.add_argument("genotypes", nargs="+", help="zoo names, genotype.json files or search run folders")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cpu-time", action="store_true", help="CPU time of the one torch thread, not wall time")
    args = parser.parse_args()
    if args.cpu_time:
        if args.device != "cpu" or args.threads != 1:
            parser.error("--cpu-time needs --device cpu and --threads 1")
        time.perf_counter = time.thread_time  # engines/profile.py's timer reads perf_counter

    recipe = load_evaluation_recipe(args.recipe)
    ops = [op for op in DARTS_SPACE if op != "none"]
    load = os.getloadavg()[0]
    table = profile_network(recipe, ops=ops, device=args.device, batch=args.batch, threads=args.threads,
                            repeats=args.repeats, warmup=10)
    layout, _ = evaluation_layout(recipe, 4, 4)
    costs, fixed = table.op_costs(), table.fixed_costs()
    model = CostModel.from_costs("latency", layout, ops, lambda op, site: costs[(op, site)],
                                 sum(fixed[(part.name, part.input_shape)] for part in layout.fixed))
    for ref in args.genotypes:
        genotype = load_genotype(ref)
        network = build_layout_network(layout.kind, genotype, channels=layout.channels, layers=layout.layers,
                                       in_channels=layout.input_shape[0], num_classes=layout.num_classes)
        predicted = model.of_genotype(genotype)
        measured, iqr, how, _ = measure_latency(network, layout.input_shape, table)
        print(json.dumps({
            "recipe": args.recipe, "genotype": ref, "device": table.describe(), "clock": "thread CPU time"
            if args.cpu_time else "wall", "predicted_ms": round(predicted, 4), "measured_ms": round(measured, 4),
            "measured_iqr_ms": round(iqr, 4), "error_percent": round(100 * (predicted - measured) / measured, 2),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
        }), flush=True)


if __name__ == "__main__":
    with torch.random.fork_rng():
        main()
