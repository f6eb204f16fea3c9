"""BatchNorm with a faster CPU path for channels_last input whose channel count is not a multiple of 16.

PyTorch's CPU kernels for NHWC batch norm vectorise over the channels (the
innermost axis). When that count is not a multiple of 8 they are several times
slower than for a multiple of 16, and an odd multiple of 8 (8, 24, 40 ...: half an
AVX512 vector left over) is slower too: measured on 2 cores (AVX512;
``bench/bench_kernels.py``, ``bench/results-kernels-cpu.md``), training-mode
forward / forward+backward of ``(96, C, 32, 32)`` in bf16, times scaled to 36
channels: C=32 0.82 / 2.67 ms, C=36 2.08 / 6.85 ms, C=48 0.77 / 2.24 ms; this
module's path for C=36: 0.99 / 3.00 ms. DARTS' evaluation networks
at C=36 (36, 108, 144 ... channels) and the supernet's grouped blocks over 3
edges (12 channels) hit this.

An NHWC tensor is an ``(N*H*W, C)`` matrix in memory; read as an
``(N*H*W / k, k*C)`` matrix with ``k*C`` a multiple of 16, each channel is
``k`` columns. :class:`BatchNorm2d` then takes each column's statistics with
PyTorch's fast kernel, merges the ``k`` columns of a channel (equal counts:
mean of means; mean of variances plus variance of means), and normalises
with those per-channel statistics as one per-column affine map. The backward
pass likewise takes per-column sums from PyTorch's batch-norm backward kernel,
merges them per channel and applies the input gradient as two per-column
affine maps. The same function, statistics and running-statistics update as
``nn.BatchNorm2d`` (``tests/test_norm.py`` checks outputs, gradients and
buffers against it), in fp32 throughout for fp32 input; for bf16 input the
statistics are fp32 and the outputs bf16, as PyTorch's own kernel gives them.

Everything else (NCHW, CUDA, evaluation mode, channel counts that are
multiples of 16, fewer than ``COLUMN_MIN_PIXELS`` pixels, or ``HALF_VECTOR_MIN_PIXELS`` for odd multiples of 8,
compiled graphs) takes PyTorch's own path.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


#: Fewest pixels (N*H*W) at which the column path is faster (``bench/results-kernels-cpu.md``): (32, 12, 16, 16)
#: fp32 0.60 -> 0.51 ms forward+backward, (96, 36, 16, 16) bf16 1.93 -> 1.01 ms; below it PyTorch's kernel was
#: faster in a sweep the same day ((32, 12, 12, 12) 0.33 against 0.47 ms, (96, 36, 8, 8) 0.48 against 0.57 ms).
COLUMN_MIN_PIXELS = 8192

#: The same for channel counts that are odd multiples of 8 (``k = 2``): fp32 forward+backward on 2 cores,
#: PyTorch's kernel against the column path, 8 channels: 8,192 pixels 0.34 against 0.42 ms, 16,384 (64 x 16x16)
#: 0.57 against 0.47, 65,536 (256 x 16x16) 2.86 against 0.86, 262,144 (256 x 32x32) 10.7 against 2.7 ms;
#: 24 channels: 8,192 0.45 against 0.51, 16,384 0.82 against 0.68, 65,536 4.7 against 1.8 ms.
HALF_VECTOR_MIN_PIXELS = 16384


def is_compiling() -> bool:
    """Whether torch.compile is tracing this call (``torch.compiler.is_compiling`` exists from torch 2.3 on;
    eldarts accepts 2.1)."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check is not None and check())


def column_factor(x: torch.Tensor) -> int:
    """``k`` for which :class:`BatchNorm2d` reads ``x`` as ``k * C`` columns; 1: PyTorch's own kernel."""
    if (x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16)
            or is_compiling()):
        return 1
    n, c, h, w = x.shape
    if c % 16 == 0 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return 1
    k = 16 // math.gcd(c, 16)
    least = HALF_VECTOR_MIN_PIXELS if c % 8 == 0 else COLUMN_MIN_PIXELS
    return k if (n * h * w) % k == 0 and n * h * w >= least else 1


def _columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """The NHWC storage of ``x`` as an ``(N*H*W / k, k*C)`` matrix (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w // k, k * c)


def _affine(columns: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``columns * scale + shift`` per column, one pass. fp32: one broadcast ``addcmul`` (measured 2x faster
    than batch norm's evaluation kernel on a 2-core AVX2 CPU: 16 columns x 16,384 rows 49 against 107 us);
    bf16 columns with fp32 ``scale``: that evaluation kernel (unit statistics), which gives bf16 back."""
    if columns.dtype == scale.dtype:
        return torch.addcmul(shift, columns, scale)
    width = columns.shape[1]
    zero, one = torch.zeros(width, dtype=scale.dtype), torch.ones(width, dtype=scale.dtype)
    return F.batch_norm(columns, zero, one, scale, shift, False, 0.0, 0.0)


def _per_column(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Per-channel rows ``(R, C)`` as per-column rows ``(R, k * C)`` (column ``j * C + c`` is channel ``c``)."""
    return torch.cat([rows] * k, dim=1)


class _ColumnBatchNorm(torch.autograd.Function):
    """Batch norm of an ``(M / k, k * C)`` column matrix whose column ``j * C + c`` holds channel ``c``.

    Matrix in, matrix out: the NHWC views are taken outside, so the output is no view made inside the
    function (an in-place ReLU may follow it). The per-channel arithmetic is kept to few small operations (each
    costs ~5-20 us on the CPU, about what normalising 8,192 pixels of 4 channels costs)."""

    @staticmethod
    def forward(ctx, columns, weight, bias, running_mean, running_var, momentum, eps, k):
        c = columns.shape[1] // k
        count = columns.shape[0] * k
        # per-column mean and biased variance in fp32 (fp32 dummies make bf16 input give fp32 statistics)
        col_mean, col_var = torch.ops.aten.batch_norm_update_stats(
            columns, torch.zeros(k * c), torch.ones(k * c), 0.0)
        # merged per channel (equal counts): mean of means; mean of variances plus variance of means
        var_of_means, mean = torch.var_mean(col_mean.view(k, c), 0, correction=0)
        var = col_var.view(k, c).mean(0).add_(var_of_means)
        invstd = (var + eps).rsqrt_()
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
        scale_shift_mean_invstd = _per_column(torch.stack((scale, shift, mean, invstd)), k)
        ctx.save_for_backward(columns, mean, invstd, weight, scale_shift_mean_invstd[2:])
        ctx.k, ctx.eps, ctx.has_bias = k, eps, bias is not None
        return _affine(columns, scale_shift_mean_invstd[0], scale_shift_mean_invstd[1])

    @staticmethod
    def backward(ctx, grad):
        columns, mean, invstd, weight, mean_invstd = ctx.saved_tensors
        k = ctx.k
        if torch.is_grad_enabled():  # a double backward (create_graph=True): the same gradient, differentiably
            return _differentiable_backward(columns, weight, grad, k, ctx.eps, ctx.has_bias, ctx.needs_input_grad)
        c = columns.shape[1] // k
        count = columns.shape[0] * k
        grad = grad.contiguous()
        # per column: sum(grad) and sum(grad * (x - mean) * invstd), at the channel's statistics
        _, col_dot, col_sum = torch.ops.aten.native_batch_norm_backward(
            grad, columns, None, None, None, mean_invstd[0], mean_invstd[1], True, 0.0, [False, True, True])
        grad_sum, grad_dot = torch.stack((col_sum, col_dot)).view(2, k, c).sum(1)  # sum(grad), sum(grad * xhat)
        grad_columns = None
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight
            # d/dx = scale * (grad - sum(grad)/M - xhat * sum(grad * xhat)/M) = scale*grad + a*x + b
            a = (scale * invstd).mul_(grad_dot).mul_(-1.0 / count)
            b = torch.addcmul((scale * grad_sum).mul_(-1.0 / count), mean, a, value=-1)
            a_b_scale = _per_column(torch.stack((a, b, scale)), k)
            grad_columns = _affine(columns, a_b_scale[0], a_b_scale[1])
            grad_columns = grad_columns.addcmul_(grad, a_b_scale[2].to(grad.dtype))
        grad_weight = grad_dot.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = grad_sum.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        return grad_columns, grad_weight, grad_bias, None, None, None, None, None


def _differentiable_backward(columns, weight, grad, k, eps, has_bias, needs):
    """The column path's backward pass built from differentiable operations on the saved input (statistics
    recomputed with autograd), so that a double backward through it is exact."""
    with torch.enable_grad():
        cols = columns if columns.requires_grad else columns.detach().requires_grad_(needs[0])
        w = None if weight is None else (weight if weight.requires_grad else weight.detach().requires_grad_(needs[1]))
        c = cols.shape[1] // k
        x = cols.float().reshape(-1, k, c)
        mean = x.mean(dim=(0, 1))
        var = (x - mean).square().mean(dim=(0, 1))
        out = (x - mean) * torch.rsqrt(var + eps)
        if w is not None:
            out = out * w
        out = out.reshape(cols.shape)
        wanted = [t for t, need in ((cols, needs[0]), (w, needs[1])) if t is not None and need and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad.to(out.dtype), create_graph=True)) if wanted else iter(())
        grad_columns = next(grads).to(columns.dtype) if needs[0] and cols.requires_grad else None
        grad_weight = next(grads) if w is not None and needs[1] and w.requires_grad else None
    grad_bias = grad.reshape(-1, k, grad.shape[1] // k).sum(dim=(0, 1)).to(weight.dtype) \
        if has_bias and weight is not None and needs[2] else None
    return grad_columns, grad_weight, grad_bias, None, None, None, None, None


def _column_batch_norm(x, k, running_mean, running_var, weight, bias, momentum, eps) -> torch.Tensor:
    n, c, h, w = x.shape
    out = _ColumnBatchNorm.apply(_columns(x, k), weight, bias, running_mean, running_var, momentum, eps, k)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def batch_norm(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
               weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], training: bool,
               momentum: float, eps: float) -> torch.Tensor:
    """``F.batch_norm``, through the column path where it is faster (see the module docstring)."""
    k = column_factor(x) if training else 1
    if k == 1:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return _column_batch_norm(x, k, running_mean, running_var, weight, bias, momentum, eps)


def count_batch(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """``nn.BatchNorm2d``'s bookkeeping for one forward: count the batch (training, tracked statistics) and
    return the running-statistics factor (``momentum``, or ``1 / batches`` for a cumulative average)."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else bn.momentum


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state_dict) with the faster CPU path above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = column_factor(x) if self.training else 1
        if k == 1:
            return super().forward(x)
        self._check_input_dim(x)
        return _column_batch_norm(x, k, self.running_mean, self.running_var, self.weight, self.bias,
                                  count_batch(self), self.eps)
