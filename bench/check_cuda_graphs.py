"""``runtime.cuda_graphs`` against eager steps on a device: what the replayed steps compute, not how fast.

The same search (``recipes/quickstart.yaml``, two epochs: a warm-up one and one with architecture steps) and the
same training (``recipes/eval-quick.yaml``, two epochs, drop path off: a recorded graph draws its random numbers
through another offset of the generator than eager steps do) run three times from the same seed: eagerly, eagerly
again (the noise floor: cuDNN's kernels do not always sum in the same order), and with the step recorded as one
CUDA graph. Each group of tensors (architecture weights; supernet or network weights; BatchNorm statistics) is
compared by what training changed: ``||graph - eager|| / ||eager - initial||``. A group passes when that is at most
10 times the floor's (the second eager run against the first) or at most ``--tolerance``: a replay that read a
stale batch, a baked learning rate or the wrong device would move the weights' change by tens of percent.

On the CPU (``--device cpu``) the recorded graph is :class:`eldarts_cli.engines.graphs.Replay`, the test suite's
stand-in, so that this script is tested where no GPU is: there every distance is 0.

    python bench/check_cuda_graphs.py [--device cuda] [--write FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _groups(named: dict) -> dict:
    """Flattened float copies of a state, by group."""
    import torch

    groups: dict[str, list] = {"architecture": [], "weights": [], "BatchNorm statistics": []}
    for name, tensor in named.items():
        if not torch.is_floating_point(tensor):
            continue
        leaf = name.rsplit(".", 1)[-1]
        group = ("architecture" if leaf.startswith(("alpha_", "edge_")) else
                 "BatchNorm statistics" if leaf in ("running_mean", "running_var") else "weights")
        groups[group].append(tensor.detach().double().flatten().cpu())
    return {name: torch.cat(parts) for name, parts in groups.items() if parts}


def run_search(device: str, graphs: bool, tmp: Path) -> tuple[dict, dict, int]:
    """(initial groups, final groups, replayed steps) of the quickstart search, two epochs."""
    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    cuda = device.startswith("cuda")
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", SearchRecipe, [
        f"runtime.device={device}", "search.epochs=2", "search.warmup_epochs=1", "data.limit=400",
        f"runtime.cuda_graphs={str(graphs and cuda).lower()}", "runtime.threads=1"])
    searcher = Searcher(recipe, tmp / f"search-{graphs}-{time.monotonic_ns()}")
    return _two_epochs(searcher, searcher.run_epoch, replay=graphs and not cuda)


def run_training(device: str, graphs: bool, tmp: Path) -> tuple[dict, dict, int]:
    """(initial groups, final groups, replayed steps) of eval-quick's DARTS_V2 training, two epochs, no drop path."""
    import torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.engines.distributed import Distributed
    from eldarts_cli.engines.evaluate import Evaluation
    from eldarts_cli.models.genotypes import GENOTYPES

    cuda = device.startswith("cuda")
    recipe = load_recipe(ROOT / "recipes" / "eval-quick.yaml", EvalRecipe, [
        f"runtime.device={device}", "train.epochs=2", "network.drop_path=0", "data.limit=640", "train.onnx=false",
        f"runtime.cuda_graphs={str(graphs and cuda).lower()}", "runtime.threads=1"])
    evaluation = Evaluation(recipe, GENOTYPES.get("DARTS_V2"), tmp / f"eval-{graphs}-{time.monotonic_ns()}",
                            device=torch.device(device), dist=Distributed.from_env(), resume=False,
                            report=lambda event: None)
    return _two_epochs(evaluation, evaluation.train_epoch, replay=graphs and not cuda)


def _two_epochs(run, epoch, replay: bool) -> tuple[dict, dict, int]:
    """(initial groups, final groups, replayed steps) of two epochs of a Searcher or Evaluation ``run``; ``replay``:
    its step through the Replay stand-in (the CPU's graph)."""
    from eldarts_cli.engines.graphs import Replay, StepGraph

    if replay:
        run.graphs = StepGraph(Replay())
    initial = _groups(run.model.state_dict())
    for number in range(2):
        epoch(number)
    return initial, _groups(run.model.state_dict()), run.graphs.replayed if run.graphs else 0


def distance(a, b, initial) -> float:
    """``||a - b|| / ||b - initial||``: ``a``'s difference from ``b`` against what training changed in ``b``."""
    change = (b - initial).norm().item()
    return (a - b).norm().item() / change if change else (a - b).norm().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--write", default=None, help="also write the output (Markdown) to this file")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the code, not TF32
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (graph: the Replay stand-in)"
    lines = [f"runtime.cuda_graphs against eager steps on {args.device} ({name}; torch {torch.__version__}); "
             f"{time.strftime('%Y-%m-%d %H:%M')}.",
             "Distance: ||graph - eager|| / ||eager - initial||; floor: a second eager run against the first; ok up "
             f"to 10x the floor or {args.tolerance:g}.", "",
             "| run | tensors | graph vs eager | floor (eager vs eager) | result | replayed steps |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for label, run in (("search (quickstart, 2 epochs)", run_search), ("training (eval-quick, 2 epochs)",
                                                                        run_training)):
            initial, eager, _ = run(args.device, False, tmp)
            _, again, _ = run(args.device, False, tmp)
            _, graphed, replays = run(args.device, True, tmp)
            for group in eager:
                floor = distance(again[group], eager[group], initial[group])
                found = distance(graphed[group], eager[group], initial[group])
                ok = found <= max(10 * floor, args.tolerance)
                failed |= not ok or replays == 0
                line = (f"| {label} | {group} | {found:.2e} | {floor:.2e} | {'ok' if ok else 'FAILED'} | "
                        f"{replays}{'' if replays else ' (none: FAILED)'} |")
                lines.append(line)
                print(line, flush=True)
    if args.write:
        Path(args.write).write_text("\n".join(lines) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
