"""ATen calls in one forward and backward pass of each recipe's supernet, by op: what a GPU step launches.

A search step on a GPU at these sizes looked bound by the host (bench/results-search-cuda.md): its time is the
dispatch of many small kernels. The number of ATen calls is the yardstick for that which needs no GPU: the
``meta`` device takes the code paths CUDA takes (eldarts' CPU-only kernels are skipped on any other device) and
computes nothing. One difference is emulated: PyTorch's meta convolution returns NCHW for channels_last input,
where cuDNN keeps channels_last, so on meta the counter restrides convolution outputs and gradients to the input's
layout (uncounted) before eldarts' layout-dependent branches see them. The count is the same on every machine and
an estimate of the CUDA path's (cuDNN's own choices are not modelled); not every call launches a kernel (views,
``empty``, ``detach`` do not), so the table splits them.

    python bench/count_calls.py [--batch 2] [--write FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: ATen ops that only make views or allocate (no kernel on a GPU).
NO_KERNEL = {"view", "_unsafe_view", "as_strided", "unbind", "permute", "slice", "select", "detach", "empty",
             "empty_like", "empty_strided", "expand", "t", "transpose", "unsqueeze", "squeeze", "alias", "split",
             "split_with_sizes", "narrow", "reshape", "_reshape_alias", "new_empty", "new_empty_strided",
             "lift_fresh", "_to_copy_meta"}

RECIPES = {  # (ops, partial channels K, edge coefficients), as recipes/search-*.yaml set them
    "EL-DARTS": ("ess", 4, True),
    "PC-DARTS": ("darts", 4, True),
    "DARTS (1st order)": ("darts", 1, False),
}


@contextlib.contextmanager
def _meta_autocast():
    """``torch.autocast("meta")`` is refused; eldarts' fused sums enter one to leave it (disabled): a no-op there."""
    import torch

    real = torch.autocast

    class Autocast:
        def __init__(self, device_type, *args, **kwargs):
            self.inner = contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

        def __enter__(self):
            return self.inner.__enter__()

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    torch.autocast = Autocast
    try:
        yield
    finally:
        torch.autocast = real


def count(name: str, device: str, batch: int, channels: int = 16, layers: int = 8,
          size: int = 32) -> collections.Counter:
    """Calls by op name of one forward and backward pass (cross-entropy loss) after one untimed pass."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from eldarts_cli.models.spaces import SEARCH_SPACES
    from eldarts_cli.models.supernet import Supernet

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            self.calls[name] += 1
            out = func(*args, **(kwargs or {}))
            if name in ("convolution", "convolution_backward") and args[0].device.type == "meta":
                out = _as_cudnn_lays_out(args, out)
            return out

    def _as_cudnn_lays_out(args, out):
        """cuDNN's layouts for a convolution whose input (forward) or gradient (backward) is channels_last: the
        output, and the input and weight gradients, channels_last too."""
        first = args[0]
        if not (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)
                and not first.is_contiguous()):
            return out
        nhwc = lambda t: t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) \
            and t.dim() == 4 else t  # noqa: E731
        return tuple(nhwc(t) for t in out) if isinstance(out, tuple) else nhwc(out)

    space, k, edges = RECIPES[name]
    torch.manual_seed(0)
    net = Supernet(ops=SEARCH_SPACES.get(space).ops, num_classes=10, channels=channels, layers=layers, nodes=4,
                   partial_channels=k, edge_coefficients=edges)
    net = net.to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    with _meta_autocast():
        F.cross_entropy(net(x), y).backward()
        counter = Counter()
        with counter:
            F.cross_entropy(net(x), y).backward()
    return counter.calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--write", help="also write the table to this file")
    args = ap.parse_args(argv)
    import torch

    lines = [f"ATen calls of one forward and backward pass, supernet C={args.channels}, {args.layers} cells, batch "
             f"{args.batch} of {args.size}x{args.size}, channels_last; torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}. meta: the code paths of CUDA (and any device but the CPU).", "",
             "| recipe | device | calls | of which kernels | top kernel ops |", "|---|---|---|---|---|"]
    for name in RECIPES:
        for device in ("cpu", "meta"):
            calls = count(name, device, args.batch, args.channels, args.layers, args.size)
            kernels = collections.Counter({op: n for op, n in calls.items() if op not in NO_KERNEL})
            top = ", ".join(f"{op} {n}" for op, n in kernels.most_common(args.top))
            lines.append(f"| {name} | {device} | {sum(calls.values()):,} | {sum(kernels.values()):,} | {top} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
