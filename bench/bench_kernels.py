"""Kernel timings behind two of eldarts' CPU paths, each beside PyTorch's own path in the same run.

1. BatchNorm on channels_last input (``eldarts_cli/models/norm.py``): PyTorch's kernel over a sweep of channel
   counts (its cliff when the count is not a multiple of 8), then eldarts' ``BatchNorm2d`` (column path) against
   ``nn.BatchNorm2d`` at the shapes where it applies or was measured slower.
2. FactorizedReduce (``eldarts_cli/models/ops.py``): the public DARTS form (stride-2 ``nn.Conv2d``) against
   eldarts' form (``relu_subsampled``, ``SubsampledConv1x1``), whole block.
3. The supernet's separable and dilated blocks (``ops.GroupedDilConv``): E edges' depthwise + pointwise convs
   on one shared input as two convolutions (the input copied per edge, grouped depthwise, grouped pointwise)
   against one convolution with the composed kernel (``ops.composed_kernel``), in NCHW and in NHWC (copies in
   and out included): what ``ops.composed_in_nhwc``'s thresholds rest on.
4. The per-edge pair of a separable block (its second, ``groups=E``) on NHWC input, as the CPU search runs it:
   depthwise + grouped pointwise convs in NHWC against the composed kernel in NHWC: what
   ``ops.composes_per_edge`` rests on.

Medians of repeated training-mode forward and forward+backward calls, in milliseconds, one process.

    python bench/bench_kernels.py
    python bench/bench_kernels.py --write bench/results-kernels-cpu.md
    python bench/bench_kernels.py --sections 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from eldarts_cli.core.device import cpu_label
from eldarts_cli.models.norm import BatchNorm2d, column_factor
from eldarts_cli.models.ops import FactorizedReduce, composed_kernel


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def forward_backward(module: nn.Module, x: torch.Tensor):
    grad = torch.randn_like(module(x))  # in the output's memory format, as autograd would hand it back

    def run():
        out = module(x)
        torch.autograd.grad(out, [x] + [p for p in module.parameters() if p.requires_grad], grad)

    return run


def nhwc(shape, dtype) -> torch.Tensor:
    return torch.randn(*shape).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()


def block_timings(batch: int, c: int, size: int, edges: int, kernel: int, stride: int, dilation: int,
                  first: bool, reps: int) -> list[float]:
    """Forward+backward ms of one depthwise + pointwise pair over ``edges`` edges: two convs (NCHW), then the
    composed kernel in NCHW and in NHWC. ``first``: every edge reads the same ``c`` channels (a block's first
    pair); otherwise each edge its own (the second pair of a separable block)."""
    width, pad = edges * c, dilation * (kernel - 1) // 2
    x = torch.randn(batch, c if first else width, size, size, requires_grad=True)
    dw = torch.randn(width, 1, kernel, kernel, requires_grad=True)
    pw = torch.randn(width, c, 1, 1, requires_grad=True)

    def two():
        wide = torch.cat([x] * edges, dim=1) if first else x
        return F.conv2d(F.conv2d(wide, dw, None, stride, pad, dilation, groups=width), pw, groups=edges)

    def composed(layout):
        def run():
            inp = x.contiguous(memory_format=layout)
            out = F.conv2d(inp, composed_kernel(dw, pw, edges), None, stride, pad, dilation,
                           groups=1 if first else edges)
            return out.contiguous()
        return run

    grad = torch.randn_like(two())
    return [median_ms(lambda: torch.autograd.grad(fn(), [x, dw, pw], grad), reps)
            for fn in (two, composed(torch.contiguous_format), composed(torch.channels_last))]


def per_edge_timings(batch: int, c: int, size: int, edges: int, kernel: int, reps: int) -> list[float]:
    """Forward+backward ms of a per-edge pair on NHWC input: two convs in NHWC, then the composed kernel."""
    width, pad = edges * c, kernel // 2
    x = nhwc((batch, width, size, size), torch.float32)
    dw = torch.randn(width, 1, kernel, kernel, requires_grad=True)
    pw = torch.randn(width, c, 1, 1, requires_grad=True)

    def two():
        return F.conv2d(F.conv2d(x, dw, None, 1, pad, groups=width), pw, groups=edges)

    def composed():
        return F.conv2d(x, composed_kernel(dw, pw, edges), None, 1, pad, groups=edges)

    grad = torch.randn_like(two()).contiguous(memory_format=torch.channels_last)
    return [median_ms(lambda: torch.autograd.grad(fn(), [x, dw, pw], grad), reps) for fn in (two, composed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--write", default=None, help="also write the output (Markdown) to this file")
    parser.add_argument("--sections", default="1,2,3,4", help="which sections to run (comma list)")
    args = parser.parse_args()
    sections = {int(v) for v in args.sections.split(",")}
    cpu = cpu_label(detail=True)
    lines = [f"Kernel timings (bench/bench_kernels.py), {time.strftime('%Y-%m-%d %H:%M')}",
             f"Machine: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}",
             f"Medians of {args.reps} calls, ms: forward / forward+backward, training mode.", ""]

    def emit(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    for line in lines:
        print(line)
    if 1 in sections:
        section_1(args, emit)
    if 2 in sections:
        section_2(args, emit)
    if 3 in sections:
        section_3(args, emit)
    if 4 in sections:
        emit("4. Per-edge pairs (a separable block's second, groups=E) on NHWC input, fp32, forward+backward")
        emit("")
        emit("| batch | input per edge | edges | pair | depthwise + pointwise (NHWC) | composed (NHWC) |")
        emit("|---|---|---|---|---|---|")
        for batch in (32, 256):
            for c, size in ((4, 32), (8, 16), (16, 8)):
                for kernel in (3, 5):
                    ms = per_edge_timings(batch, c, size, 4, kernel, max(3, args.reps // 3))
                    emit(f"| {batch} | {c} x {size}x{size} | 4 | {kernel}x{kernel} | {ms[0]:.2f} | {ms[1]:.2f} |")
        emit("")
    if args.write:
        with open(args.write, "w") as f:
            f.write("\n".join(lines) + "\n")


def section_1(args, emit) -> None:
    emit("1a. PyTorch's BatchNorm (nn.BatchNorm2d), (96, C, 32, 32), times scaled to 36 channels")
    emit("")
    emit("| dtype | C | NCHW | NHWC |")
    emit("|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for c in (32, 36, 40, 48, 64):
            cells = []
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(96, c, 32, 32).to(dtype).contiguous(memory_format=layout).requires_grad_()
                bn = nn.BatchNorm2d(c)
                scale = 36 / c
                cells.append(f"{median_ms(lambda: bn(x), args.reps) * scale:.2f} / "
                             f"{median_ms(forward_backward(bn, x), args.reps) * scale:.2f}")
            emit(f"| {str(dtype)[6:]} | {c} | {cells[0]} | {cells[1]} |")
    emit("")
    emit("1b. channels_last BatchNorm: nn.BatchNorm2d against eldarts' BatchNorm2d (column path where it applies)")
    emit("")
    emit("| shape | dtype | nn.BatchNorm2d | eldarts BatchNorm2d | column path |")
    emit("|---|---|---|---|---|")
    for shape, dtype in (((96, 36, 32, 32), torch.bfloat16), ((96, 36, 16, 16), torch.bfloat16),
                         ((96, 108, 32, 32), torch.bfloat16), ((96, 36, 32, 32), torch.float32),
                         ((32, 12, 32, 32), torch.float32), ((32, 12, 16, 16), torch.float32),
                         ((256, 12, 32, 32), torch.float32), ((32, 12, 12, 12), torch.float32),
                         ((96, 36, 8, 8), torch.bfloat16)):
        x = nhwc(shape, dtype)
        cells = []
        for bn in (nn.BatchNorm2d(shape[1]), BatchNorm2d(shape[1])):
            cells.append(f"{median_ms(lambda: bn(x), args.reps):.2f} / {median_ms(forward_backward(bn, x), args.reps):.2f}")
        emit(f"| {shape} | {str(dtype)[6:]} | {cells[0]} | {cells[1]} | {'yes' if column_factor(x) > 1 else 'no'} |")
    emit("")


def section_2(args, emit) -> None:
    emit("2. FactorizedReduce (ReLU, two stride-2 1x1 convs, BatchNorm), fp32")
    emit("")
    emit("| input -> channels | layout | public form (stride-2 nn.Conv2d) | eldarts (relu_subsampled, SubsampledConv1x1) |")
    emit("|---|---|---|---|")
    for shape, out, layout in (((256, 64, 32, 32), 32, torch.contiguous_format),
                               ((256, 128, 16, 16), 64, torch.contiguous_format),
                               ((32, 64, 32, 32), 32, torch.contiguous_format),
                               ((96, 144, 32, 32), 72, torch.channels_last)):
        x = torch.randn(*shape).contiguous(memory_format=layout).requires_grad_()
        cells = []
        for plain in (True, False):
            block = FactorizedReduce(shape[1], out, affine=False, plain=plain)
            block.to(memory_format=layout)
            cells.append(f"{median_ms(lambda: block(x), args.reps):.1f} / "
                         f"{median_ms(forward_backward(block, x), args.reps):.1f}")
        emit(f"| {shape} -> {out} | {'NHWC' if layout is torch.channels_last else 'NCHW'} | {cells[0]} | {cells[1]} |")
    emit("")


def section_3(args, emit) -> None:
    emit("3. Depthwise + pointwise pairs of the supernet's grouped blocks, fp32, forward+backward (input and weights)")
    emit("")
    emit("| batch | input | edges | pair | two convs (NCHW) | composed, NCHW | composed, NHWC |")
    emit("|---|---|---|---|---|---|---|")
    for batch in (32, 256):
        for c, size, edges, kernel, stride, dilation, first in (
                (4, 32, 4, 3, 1, 1, True), (4, 32, 4, 3, 1, 1, False), (4, 32, 4, 3, 1, 2, True),
                (4, 32, 2, 3, 1, 1, False), (8, 32, 4, 3, 2, 1, True), (8, 32, 4, 3, 2, 2, True),
                (8, 16, 4, 3, 1, 1, True), (8, 16, 4, 3, 1, 1, False), (8, 16, 4, 3, 1, 2, True),
                (16, 8, 4, 3, 1, 1, True), (16, 8, 4, 3, 1, 2, True), (4, 32, 4, 5, 1, 2, True)):
            ms = block_timings(batch, c, size, edges, kernel, stride, dilation, first, max(3, args.reps // 3))
            pair = f"{kernel}x{kernel}" + (f" dilation {dilation}" if dilation > 1 else "") + \
                (f" stride {stride}" if stride > 1 else "") + (", shared input" if first else ", per edge")
            emit(f"| {batch} | {c} x {size}x{size} | {edges} | {pair} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} |")
    emit("")


if __name__ == "__main__":
    main()
