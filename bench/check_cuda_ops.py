"""Each operator of the search spaces, as eldarts' fused supernet runs it on a device, against the same supernet in
float64 on the CPU: the output and every gradient (weights, op weights, edge coefficients) of one training batch.

The device runs what a search runs there: fp32 in channels_last (TF32 off, so that the comparison is of the code,
not of TF32's 10-bit products). The CPU copy runs NCHW in float64, through the CPU's own kernels, which the test
suite checks against the edge-by-edge reference. Each operator is checked alone in a supernet of its own, at
partial channels K=4 (PC-DARTS' and EL-DARTS' 4-channel ops) and K=1 (DARTS'), then each whole space.

fp32 alone can be far from float64 on some tensors (a weight ahead of a non-affine BatchNorm over few channels has
a gradient near zero, by scale invariance), so each tensor is judged against the CPU's own fp32 error: the same
network run on the CPU in fp32 NCHW is the noise floor. A tensor passes when the device's distance from float64
is at most 10 times the CPU fp32 distance, or at most ``--tolerance`` relative to the tensor (``||a - b|| /
||b||``); a configuration's row names its tensor with the largest share of that allowance.

Every configuration runs in a child process until one fails: a CUDA error leaves the process' CUDA context
unusable, so the next child starts after the failed configuration, and the failed one is rerun alone with
``CUDA_LAUNCH_BLOCKING=1``, whose traceback (printed) names the kernel that failed.

    python bench/check_cuda_ops.py [--device cuda] [--write FILE]
    python bench/check_cuda_ops.py --device cpu --quick        # the same on the CPU, tiny (the test suite's run)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MARK = "CONFIG-RESULT "


def configurations(quick: bool) -> list[dict]:
    """``{"label", "ops", "k"}`` per configuration: each operator alone at K=4 and K=1, then each whole space."""
    from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE

    darts, ess = list(DARTS_SPACE), list(ESS_SPACE)
    singles = [op for op in darts if op != "none"]
    out = []
    for k in (4,) if quick else (4, 1):
        out += [{"label": op, "ops": [op], "k": k} for op in singles]
        out.append({"label": "none, skip_connect", "ops": ["none", "skip_connect"], "k": k})
    if not quick:
        out += [{"label": "PC-DARTS space (darts ops, K=4)", "ops": darts, "k": 4},
                {"label": "DARTS space (darts ops, K=1)", "ops": darts, "k": 1},
                {"label": "EL-DARTS space (ess ops, K=4)", "ops": ess, "k": 4}]
    return out


def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` in float64 (0 where both are 0)."""
    a, b = a.double().cpu(), b.double().cpu()
    norm = float(b.norm())
    diff = float((a - b).norm())
    return diff / norm if norm > 0 else diff


def check(config: dict, args: argparse.Namespace) -> dict:
    """One configuration: the device's output and gradients against the CPU's float64 ones."""
    import torch
    import torch.nn.functional as F

    from eldarts_cli.models.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(ops=config["ops"], num_classes=10, channels=args.channels, layers=args.layers, nodes=args.nodes,
                   partial_channels=config["k"], edge_coefficients=True, alpha_init_std=1.0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    results = []
    for device, dtype, layout in ((args.device, torch.float32, torch.channels_last),
                                  ("cpu", torch.float64, torch.contiguous_format),
                                  ("cpu", torch.float32, torch.contiguous_format)):
        model = copy.deepcopy(net).to(device=device, dtype=dtype, memory_format=layout).train()
        inputs = x.to(device=device, dtype=dtype).contiguous(memory_format=layout)
        logits = model(inputs)
        F.cross_entropy(logits, y.to(device)).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # a kernel's error is raised here, in its configuration
        results.append({"output": logits.detach(), **{name: p.grad for name, p in model.named_parameters()
                                                        if p.grad is not None}})
    ours, exact, floor = results
    missing = sorted(set(exact) ^ set(ours))
    if missing:
        return {"error": f"gradients present on one device only: {', '.join(missing[:4])}"}
    scores = {}
    for name in exact:
        error, noise = relative_error(ours[name], exact[name]), relative_error(floor[name], exact[name])
        scores[name] = (error / max(10 * noise, args.tolerance), error, noise)
    worst = max(scores, key=lambda name: scores[name][0])
    score, distance, floor = scores[worst]
    return {"score": score, "distance": distance, "floor": floor, "tensor": worst, "tensors": len(scores)}


def child(args: argparse.Namespace) -> int:
    """Run the configurations from ``--start`` (only that one with ``--one``), a result line each."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    configs = configurations(args.quick)
    stop = args.start + 1 if args.one else len(configs)
    for index in range(args.start, stop):
        start = time.perf_counter()
        try:
            result = check(configs[index], args)
        except Exception as error:  # reported, and the driver starts after it (a CUDA context is spent)
            line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(MARK + json.dumps({"index": index, "error": f"{type(error).__name__}: {line}"}), flush=True)
            raise
        print(MARK + json.dumps({"index": index, **result, "seconds": time.perf_counter() - start}), flush=True)
    return 0


def drive(args: argparse.Namespace) -> int:
    from bench_search import child_env, diagnose_cuda_failure, failure, run_limited

    configs = configurations(args.quick)
    results: dict[int, dict] = {}
    base = [sys.executable, __file__, "--device", args.device, "--batch", str(args.batch), "--size", str(args.size),
            "--channels", str(args.channels), "--layers", str(args.layers), "--nodes", str(args.nodes),
            *(["--quick"] if args.quick else [])]
    start = 0
    while start < len(configs):
        proc = run_limited(base + ["--child", "--start", str(start)], args.timeout, cwd=ROOT, env=child_env())
        lines = [] if proc is None else [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines()
                                          if line.startswith(MARK)]
        for result in lines:
            results[result["index"]] = result
        done = [r["index"] for r in lines if "error" not in r]
        failed = next((r["index"] for r in lines if "error" in r), None)
        if failed is None and (proc is None or proc.returncode):  # died outside a configuration's try
            failed = max(done, default=start - 1) + 1
            if failed < len(configs):
                results[failed] = {"error": f"timed out after {args.timeout:g} s" if proc is None else failure(proc)}
        if failed is None:
            break
        if proc is not None:  # a CUDA error: its traceback, and the failed configuration alone, blocking launches
            print(f"{configs[failed]['label']} (K={configs[failed]['k']}) failed", file=sys.stderr)
            diagnose_cuda_failure(base + ["--child", "--start", str(failed), "--one"], proc, args.timeout,
                                  env=child_env(), cwd=ROOT)
        start = failed + 1
    table = render(configs, results, args)
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")
    bad = [i for i in range(len(configs)) if "error" in results.get(i, {"error": ""}) or results[i]["score"] > 1]
    return 1 if bad else 0


def render(configs: list[dict], results: dict[int, dict], args: argparse.Namespace) -> str:
    import platform

    import torch

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else \
        platform.processor() or platform.machine()
    lines = [f"Operators on {args.device} ({where}; torch {torch.__version__}): fp32 channels_last, TF32 off, "
             f"against float64 NCHW on the CPU; supernet C={args.channels}, {args.layers} cells, {args.nodes} nodes, "
             f"batch {args.batch} of {args.size}x{args.size}; {time.strftime('%Y-%m-%d %H:%M')}.",
             f"Each tensor (output, every gradient): relative L2 distance from float64 on the device against the "
             f"CPU's fp32 one (the noise floor); ok up to 10x the floor or {args.tolerance:g}. The row shows the "
             f"tensor nearest its limit.", "",
             "| operators | K | result | tensor | device vs float64 | CPU fp32 vs float64 | seconds |",
             "|---|---|---|---|---|---|---|"]
    for index, config in enumerate(configs):
        r = results.get(index, {"error": "not run"})
        if "error" in r:
            lines.append(f"| {config['label']} | {config['k']} | failed: {r['error']} | | | | |")
        else:
            verdict = "ok" if r["score"] <= 1 else "MISMATCH"
            lines.append(f"| {config['label']} | {config['k']} | {verdict} | {r['tensor']} | {r['distance']:.2e} | "
                         f"{r['floor']:.2e} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="each operator alone at K=4 only")
    ap.add_argument("--tolerance", type=float, default=0.1,
                    help="relative error a tensor may always have (fp32 NHWC on the CPU reached 0.019 on the PC-DARTS "
                    "space; a wrong gradient, such as PyTorch's CUDA NHWC average pooling, is off by 0.3-1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a child process may take")
    ap.add_argument("--write", help="also write the table to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {args.device}: CUDA is not available here", file=sys.stderr)
            return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return child(args) if args.child else drive(args)


if __name__ == "__main__":
    sys.exit(main())
