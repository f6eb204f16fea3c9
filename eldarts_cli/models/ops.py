"""Candidate operations of the search spaces (paper section 2.2.1; NAS-Bench-201's ``nor_conv_*``).

Every op is registered in ``OPS`` as an :class:`OpSpec`. Its factory
``build(channels, stride, affine) -> nn.Module`` serves both the evaluation
network (``affine=True``) and, edge by edge, the supernet (``affine=False``).

The supernet also asks for ``build_grouped(channels, stride, num_edges)``:
one module that computes the op for *every* edge leaving the same node at
once. Edges that leave one node read the same tensor (the first
``C / partial_channels`` channels of it), so

* parameter-free ops (pooling + BN, identity) are computed once and shared,
* convolutions of all those edges run as one grouped convolution.

This is the same function as running each edge's op on its own (a test
checks it against ``build``); it is only fewer, larger kernels.
A grouped module maps ``(N, C, H, W)`` to ``(N, E, C, H', W')``, or to
``(N, 1, C, H', W')`` when the result is the same for every edge.
Ops without a grouped form fall back to :class:`PerEdge`.

The supernet calls ``mix(x, weights, edges)`` with the :class:`SourceSums` of
the source ``x`` comes from: for every edge ``e`` it adds ``weights[e] * op_e(x)``
into the running sum of the node that edge ``e`` enters. Where an op ends in a BatchNorm, the weight
is folded into that BatchNorm's per-channel scale (one kernel instead of a
normalisation and a multiplication over the feature map); where the output is
shared by all edges, it is weighted per edge as it enters the nodes. Per-edge
outputs are channel chunks of one tensor, never slices of a 5-d view, so
their gradients keep the memory format (channels_last stays channels_last).
The per-edge outputs of one source's convolution blocks (not the shared ones)
are summed edge-major first; they and the shared outputs enter the nodes
through one autograd node per source (:class:`_MixIntoNodes`), so their
gradients are put together once per source and an edge weight's gradient is
one dot product.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.registry import Registry
from .norm import BatchNorm2d, batch_norm, count_batch, is_compiling

OpFactory = Callable[[int, int, bool], nn.Module]
GroupedFactory = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class OpSpec:
    """An operation of the search space.

    ``zero`` marks the ``none`` op: it contributes nothing to a node, so the
    supernet skips computing it (its architecture weight still takes part in
    the softmax). ``search_bn`` adds a non-affine BatchNorm after the op in
    the supernet, as DARTS does for pooling.
    """

    name: str
    build: OpFactory
    build_grouped: Optional[GroupedFactory] = None
    parameter_free: bool = False
    zero: bool = False
    search_bn: bool = False
    build_plain: Optional[OpFactory] = None  # the public DARTS code's module, where eldarts' differs


OPS: Registry[OpSpec] = Registry("op")

# --------------------------------------------------------------------------
# Per-edge modules (evaluation network, and reference for the supernet)
# --------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN.

    Where the stride equals the dilation (a reduction cell's ``dil_conv``), the depthwise conv is a
    :class:`PixelsReadConv2d`; at stride 1 with a dilation (a normal cell's), a :class:`DilatedDepthwiseConv2d`:
    the same function each; ``plain=True`` keeps the public code's ``nn.Conv2d``."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True, plain=False):
        if plain:
            depthwise = nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False)
        elif reads_every_stride_th_pixel(stride, padding, dilation):
            depthwise = PixelsReadConv2d(c_in, c_in, kernel, stride, padding, groups=c_in)
        elif stride == 1 and dilation > 1:
            depthwise = DilatedDepthwiseConv2d(c_in, kernel, padding, dilation)
        else:
            depthwise = nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False)
        super().__init__(
            nn.ReLU(inplace=False),
            depthwise,
            nn.Conv2d(c_in, c_out, 1, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first one strides."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def _shifted(x: torch.Tensor) -> torch.Tensor:
    """``x`` moved one pixel up-left (a view); zero padded where a side is odd, so odd sizes reduce like even
    ones (at even sizes a stride-2 1x1 convolution never reads the padded row and column)."""
    h, w = x.shape[-2:]
    shifted = x[:, :, 1:, 1:]
    return F.pad(shifted, (0, 1, 0, 1)) if h % 2 or w % 2 else shifted


class _ReLUSubsampled(torch.autograd.Function):
    """``relu(x)`` at the two pixel grids a FactorizedReduce reads, without rectifying the rest of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = torch.relu(x[:, :, ::2, ::2])
        odd = torch.relu(x[:, :, 1::2, 1::2])
        rows, cols = even.shape[-2] - odd.shape[-2], even.shape[-1] - odd.shape[-1]
        if rows or cols:  # an odd side: the shifted grid is one row/column short, zero padded (as _shifted does)
            odd = F.pad(odd, (0, cols, 0, rows))
        ctx.save_for_backward(even, odd)
        ctx.input_shape = x.shape
        ctx.nhwc = is_channels_last(x)
        return even, odd

    @staticmethod
    def backward(ctx, grad_even: Optional[torch.Tensor], grad_odd: Optional[torch.Tensor]) -> torch.Tensor:
        even, odd = ctx.saved_tensors
        layout = torch.channels_last if ctx.nhwc else torch.contiguous_format
        # differentiable operations only (a double backward, e.g. create_graph=True, goes through them)
        grad = torch.empty(ctx.input_shape, dtype=even.dtype, device=even.device, memory_format=layout).zero_()
        if grad_even is not None:
            grad[:, :, ::2, ::2] = torch.ops.aten.threshold_backward(grad_even, even, 0)
        if grad_odd is not None:
            h, w = grad[:, :, 1::2, 1::2].shape[-2:]
            grad[:, :, 1::2, 1::2] = torch.ops.aten.threshold_backward(grad_odd[:, :, :h, :w], odd[:, :, :h, :w], 0)
        return grad


def relu_subsampled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relu(x)[:, :, ::2, ::2], relu(_shifted(x))[:, :, ::2, ::2])``: what FactorizedReduce's two
    stride-2 1x1 convolutions read of its rectified input, rectifying only those pixels (a quarter each) and
    writing the input gradient once (autograd's slices would each zero a full-size gradient, then add them
    and pass the sum through a full-size ReLU backward). The same values and gradients."""
    return _ReLUSubsampled.apply(x)


class SubsampledConv1x1(nn.Conv2d):
    """A 1x1 convolution with stride 2, computed as a stride-1 convolution of the pixels it reads
    (``x[:, :, ::2, ::2]``): the same function. PyTorch's CPU kernels for the strided 1x1 convolution are
    slower: the whole FactorizedReduce forward+backward, measured on 2 cores (``bench/results-kernels-cpu.md``),
    (256, 64, 32, 32) -> 32 channels NCHW fp32 409.0 -> 224.2 ms, (256, 128, 16, 16) -> 64 145.8 -> 56.3 ms,
    (96, 144, 32, 32) -> 72 NHWC 217.7 -> 181.3 ms. Same
    parameters and ``state_dict`` as the ``nn.Conv2d`` it replaces; ``stride`` stays 2 for whoever reads it."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor, subsampled: bool = False) -> torch.Tensor:
        """``subsampled=True``: ``x`` already holds the pixels read (:func:`relu_subsampled`)."""
        return F.conv2d(x if subsampled else x[:, :, ::2, ::2], self.weight)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs (DARTS).

    ``plain=True`` computes the convolutions as the public DARTS code does (``nn.Conv2d`` with stride 2); the
    default computes the same function with :class:`SubsampledConv1x1`.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True, plain: bool = False):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        conv = (lambda: nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)) if plain else (
            lambda: SubsampledConv1x1(c_in, c_out // 2))
        self.conv_1, self.conv_2 = conv(), conv()
        self.bn = BatchNorm2d(c_out, affine=affine)
        self.plain = plain

    def forward(self, x):
        if self.plain:
            return self.reduce(self.relu(x))
        even, odd = relu_subsampled(x)
        return self.bn(torch.cat([self.conv_1(even, subsampled=True), self.conv_2(odd, subsampled=True)], dim=1))

    def reduce(self, x):
        """The block after its ReLU, for an input that is already rectified."""
        if self.plain and x.device.type == "cpu":
            # PyTorch 2.14's CPU backward pass of a stride-2 1x1 convolution on NHWC tensors of few channels (4 -> 2,
            # 6 -> 4) writes past its buffers on one thread (oneDNN's jit_avx2_1x1_convolution_bwd_weights, found
            # by valgrind; glibc then aborts: "corrupted size vs. prev_size"; a search on one core, or whose threads
            # the load cut to one, would crash). PyTorch takes that kernel when the input or the weight is NHWC (a
            # network moved to channels_last has NHWC 1x1 weights), so on the CPU the public form runs both
            # convolutions on NCHW input with NCHW weights, the same function, and hands back the input's layout.
            out = self._convolutions(x.contiguous(), nchw=True)
            return out.contiguous(memory_format=torch.channels_last) if channels_innermost(x) else out
        return self._convolutions(x)

    def _convolutions(self, x, nchw: bool = False):
        conv = _nchw_call if nchw else (lambda module, t: module(t))
        return self.bn(torch.cat([conv(self.conv_1, x), conv(self.conv_2, _shifted(x))], dim=1))


def _nchw_call(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with its weight in NCHW strides (through the module: its hooks, e.g. thop's, still run)."""
    weight = conv.weight
    if weight.stride() == torch.empty(weight.shape, device="meta").stride():  # NCHW strides already
        return conv(x)
    return torch.func.functional_call(conv, {"weight": weight.clone(memory_format=torch.contiguous_format)}, (x,))


def without_leading_relu(module: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``module`` minus the ReLU it starts with, sharing its layers; ``None`` if it starts with none.

    A state read by several ops that all begin with a ReLU (DARTS' convolutions, the
    cell's preprocessing) is then rectified once, not once per op: the same function,
    fewer passes over memory and one saved tensor instead of several.
    """
    if isinstance(module, FactorizedReduce):
        return module.reduce
    if isinstance(module, nn.Sequential) and len(module):
        first, rest = module[0], list(module)[1:]
        if isinstance(first, nn.ReLU):
            return nn.Sequential(*rest)
        inner = without_leading_relu(first)
        if inner is not None and isinstance(inner, nn.Module):
            return nn.Sequential(inner, *rest)
    return None


class Conv7x1x1x7(nn.Sequential):
    """ReLU, 1x7 then 7x1 conv, BN (used by NASNet/AmoebaNet cells)."""

    def __init__(self, channels, stride, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(channels, channels, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            BatchNorm2d(channels, affine=affine),
        )


# --------------------------------------------------------------------------
# Grouped modules (supernet): one op over all edges that share an input
# --------------------------------------------------------------------------


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bn(x) * scale`` (per channel) as one batch-norm call: ``scale`` takes the place of the affine weight.

    ``bn`` is a non-affine BatchNorm; its running statistics are updated as
    its own forward would update them, so the module's state is the same.
    """
    return batch_norm(x, bn.running_mean, bn.running_var, scale, None,
                      bn.training or not bn.track_running_stats, count_batch(bn), bn.eps)


class Recomputable:
    """A block that can recompute its inner activations in the backward pass instead of keeping them.

    With ``recompute`` on (``runtime.recompute``; :func:`set_recompute`), :meth:`recomputed` keeps only
    the block's input and output for the backward pass and runs the block's forward a second time there
    (``torch.utils.checkpoint``): the same values and gradients, much less memory, one more forward.
    """

    recompute: bool = False

    def recomputed(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor,
                   owner: Optional[nn.Module] = None) -> torch.Tensor:
        """``fn(*args)``, recomputed in the backward pass when ``recompute`` is on; ``owner``: the module
        whose BatchNorms ``fn`` runs (default: this block)."""
        if not (self.recompute and torch.is_grad_enabled()):
            return fn(*args)
        if is_compiling():  # the compiled graph recomputes values only, not buffer updates
            return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
        owner = self if owner is None else owner
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False,
                          context_fn=lambda: (contextlib.nullcontext(), _statistics_untouched(owner)))


@contextlib.contextmanager
def _statistics_untouched(module: nn.Module) -> Iterator[None]:
    """The recomputation normalises as the forward did, but must not move the BatchNorms' running
    statistics a second time: it updates throwaway copies of them."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
    for m, buffers in zip(bns, kept):
        m.running_mean, m.running_var, m.num_batches_tracked = (t.clone() for t in buffers)
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(bns, kept):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


def set_recompute(model: nn.Module, on: bool) -> None:
    """Turn recomputation on or off in every :class:`Recomputable` block of ``model``."""
    for m in model.modules():
        if isinstance(m, Recomputable):
            m.recompute = on


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a dense NHWC tensor (and not also a dense NCHW one, as 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def channels_innermost(x: torch.Tensor) -> bool:
    """True for a 4-D tensor whose channels are innermost in memory: NHWC, or a channel slice of it."""
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


class _GradientInLayout(torch.autograd.Function):
    """Identity whose gradient is made dense in the input's memory format."""

    @staticmethod
    def forward(ctx, x):
        ctx.layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout)


def gradient_in_layout(x: torch.Tensor) -> torch.Tensor:
    """``x``, whose gradient reaches the layers below it dense in ``x``'s memory format. Before a global
    pooling of NHWC maps: its backward hands back an NCHW gradient, and the last cell's BatchNorms and
    convolutions would run their mixed-layout paths (slower on the CPU)."""
    return _GradientInLayout.apply(x) if is_channels_last(x) else x


def interleave_channels(parts: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """Channels ``g * (P * c) + p * c + j`` from ``parts[p]``'s channel ``g * c + j`` (``c = C_p / groups``).

    E.g. per edge ``[conv_1 channels, conv_2 channels]`` from two grouped convs.
    Keeps the memory format: built in the storage order of NHWC inputs.
    """
    n, width, h, w = parts[0].shape
    c = width // groups
    if is_channels_last(parts[0]):
        stacked = torch.stack([p.permute(0, 2, 3, 1).reshape(n, h, w, groups, c) for p in parts], dim=4)
        return stacked.reshape(n, h, w, width * len(parts)).permute(0, 3, 1, 2)
    stacked = torch.stack([p.view(n, groups, c, h, w) for p in parts], dim=2)
    return stacked.view(n, width * len(parts), h, w)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum()`` of two maps, as one dot product of their storage where both are dense in the same
    memory format (no temporary map); in ``a``'s dtype (a gradient and the map it multiplies can differ under
    autocast)."""
    b = b.to(a.dtype)
    if a.stride() == b.stride() and (a.is_contiguous() or is_channels_last(a)):
        # (as_strided keeps each tensor's storage offset: the two storages in one order, element for element)
        return torch.dot(a.as_strided((a.numel(),), (1,)), b.as_strided((b.numel(),), (1,)))
    return (a * b).sum()


class _MixIntoNodes(torch.autograd.Function):
    """``total_e + wide_e + sum_j weights_j[e] * shared_j`` for every edge ``e`` leaving one source: the
    node sums after that source's terms, as one autograd node.

    ``wide_e`` is channel chunk ``e`` of the per-edge outputs (or absent), ``total_e`` the sum so far of the
    node edge ``e`` enters (or absent), ``weights_j`` ``(E,)`` or ``None`` (weight 1). Autograd's own graph of
    ``addcmul`` calls computed each weight's gradient from two temporary maps (``shared * 1``, then the
    product with the gradient) and summed the shared maps' gradients edge by edge; here a weight's gradient
    is one dot product and a shared map's gradient one chain of in-place ``addcmul_``. The backward pass is
    written in differentiable operations (double backward stays exact).
    """

    @staticmethod
    def forward(ctx, layout, wide, *args):
        # the sums keep their inputs' dtype with autocast on or off: CUDA's autocast would make torch.addcmul with
        # an fp32 weight an fp32 map beside bf16 ones (the CPU's leaves it bf16, as type promotion does)
        device = next(a for a in (wide, *args) if a is not None).device.type
        with torch.autocast(device, enabled=False):
            return _MixIntoNodes._forward(ctx, layout, wide, *args)

    @staticmethod
    def _forward(ctx, layout, wide, *args):
        num_edges, channels, num_shared = layout
        totals, shared, weights = args[:num_edges], args[num_edges::2], args[num_edges + 1::2]
        ctx.layout, ctx.has_total = layout, [t is not None for t in totals]
        # a shared map is kept only for its weight's gradient (not in a weight step: the weights are detached)
        keep = [ctx.needs_input_grad[2 + num_edges + 2 * j + 1] for j in range(num_shared)]
        ctx.save_for_backward(*(s if k else None for s, k in zip(shared, keep)), *weights)
        per_edge = [w.unbind(0) if w is not None else None for w in weights]
        outputs = []
        for e in range(num_edges):
            acc, owned = totals[e], False
            if wide is not None:
                chunk = wide.narrow(1, e * channels, channels)
                acc, owned = (chunk, False) if acc is None else (acc + chunk, True)
            for s, w in zip(shared, per_edge):
                if acc is None:
                    acc, owned = (s, False) if w is None else (s * w[e], True)
                elif owned:
                    acc = acc.add_(s) if w is None else acc.addcmul_(s, w[e])
                else:
                    acc, owned = (acc + s if w is None else torch.addcmul(acc, s, w[e])), True
            outputs.append(acc if owned else acc.clone())
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        num_edges, _, num_shared = ctx.layout
        saved = ctx.saved_tensors
        shared, weights = saved[:num_shared], saved[num_shared:]
        grad_wide = torch.cat(grads, dim=1) if ctx.needs_input_grad[1] else None
        grad_totals = [g if has else None for g, has in zip(grads, ctx.has_total)]
        grad_rest = []
        for j in range(num_shared):
            grad_s = grad_w = None
            w = weights[j]
            if ctx.needs_input_grad[2 + num_edges + 2 * j]:
                if w is None:
                    grad_s = grads[0] if num_edges == 1 else sum(grads[1:], grads[0])
                else:
                    ws = w.unbind(0)
                    grad_s = grads[0] * ws[0]
                    for g, we in zip(grads[1:], ws[1:]):
                        grad_s = grad_s.addcmul(g, we) if torch.is_grad_enabled() else grad_s.addcmul_(g, we)
            if ctx.needs_input_grad[2 + num_edges + 2 * j + 1]:
                grad_w = torch.stack([_dot(g, shared[j]) for g in grads]).to(w.dtype)
            grad_rest += [grad_s, grad_w]
        return (None, grad_wide, *grad_totals, *grad_rest)


class SourceSums:
    """The running node sums, as the edges leaving one source state add into them: what every grouped
    module's ``mix(x, weights, edges)`` receives.

    ``sums[node]`` is a node's running sum (``None`` before its first term) and edge ``e`` enters node
    ``targets[e]``; the targets are distinct (a cell has one edge per (source, later node)), which
    :meth:`flush` relies on: each node's new sum is one output of :class:`_MixIntoNodes`. Per-edge outputs of the convolution blocks (edge-major ``(N, E*C, H, W)``, ``C`` =
    ``channels``) are summed over the ops first; they and the shared outputs (weighted per edge) enter the
    nodes at :meth:`flush`, all at once (:class:`_MixIntoNodes`), so their gradients are put together once
    per source, not once per op and edge. ``prepared`` caches what several modules compute alike from the
    source (``GroupedDilConv.rectified_input``).
    """

    def __init__(self, sums: list, targets: Sequence[int], channels: int):
        self.sums, self.targets, self.channels = sums, targets, channels
        self.prepared: dict = {}
        self.wide: Optional[torch.Tensor] = None
        self.shared: list[tuple[torch.Tensor, Optional[torch.Tensor]]] = []

    def add(self, edge: int, term: torch.Tensor) -> None:
        """Add ``term`` into the sum of the node edge ``edge`` enters."""
        node = self.targets[edge]
        self.sums[node] = term if self.sums[node] is None else self.sums[node] + term

    def add_per_edge(self, outputs: torch.Tensor) -> None:
        """Chunk ``e`` (channels ``e*C .. (e+1)*C``) of ``outputs`` for edge ``e`` (added at :meth:`flush`)."""
        self.wide = outputs if self.wide is None else self.wide + outputs

    def add_shared(self, shared: torch.Tensor, weights: Optional[torch.Tensor] = None) -> None:
        """``weights[e] * shared`` (``None``: ``shared``) for every edge ``e`` (added at :meth:`flush`)."""
        self.shared.append((shared, weights))

    def flush(self) -> None:
        """Add the terms gathered so far into the nodes."""
        if self.wide is None and not self.shared:
            return
        # (a source's edges enter distinct nodes, so each node's sum is one output of the Function)
        totals = [self.sums[node] for node in self.targets]
        args = [a for pair in self.shared for a in pair]
        outputs = _MixIntoNodes.apply((len(self.targets), self.channels, len(self.shared)), self.wide,
                                      *totals, *args)
        for node, out in zip(self.targets, outputs):
            self.sums[node] = out
        self.wide, self.shared = None, []


def composed_kernel(depthwise: torch.Tensor, pointwise: torch.Tensor, num_edges: int) -> torch.Tensor:
    """The one ``k x k`` kernel that a depthwise conv followed by a pointwise conv computes, per edge.

    ``depthwise`` ``(E * C, 1, k, k)`` and ``pointwise`` ``(E * C, C, 1, 1)`` (edge-major) give
    ``W[e * C + o, i] = pointwise[e * C + o, i] * depthwise[e * C + i]``, shape ``(E * C, C, k, k)``:
    ``conv(x, W)`` equals ``pointwise(depthwise(x))`` (same stride, padding and dilation as the
    depthwise conv), with ``groups=1`` when every edge reads the same ``C`` input channels and
    ``groups=E`` when each edge reads its own. Autograd carries the kernel's gradient back to the two
    factors, so the parameters, their gradients and the function are those of the two convs.
    """
    width, c, k = pointwise.shape[0], pointwise.shape[1], depthwise.shape[-1]
    pw = pointwise.view(num_edges, c, c, 1, 1)
    dw = depthwise.view(num_edges, 1, c, k, k)
    return (pw * dw).reshape(width, c, k, k)


#: Smallest H x W of the input at which a composed block's convolution (stride 1) runs faster in NHWC than
#: in NCHW on the CPU, copies included; dilated ones from ``DILATED_NHWC_MIN_PIXELS``. Strided blocks and
#: smaller maps stay NCHW (``bench/bench_kernels.py``, "composed separable blocks").
COMPOSED_NHWC_MIN_PIXELS = 1024
DILATED_NHWC_MIN_PIXELS = 256


def composed_in_nhwc(x: torch.Tensor, stride: int, dilation: int) -> bool:
    """Whether a composed block's convolution on ``x`` runs in NHWC: always for NHWC input; on the CPU
    also for NCHW input at stride 1 of at least the pixels above (the block gives NCHW back)."""
    if is_channels_last(x):
        return True
    if x.device.type != "cpu" or x.dim() != 4 or stride != 1:
        return False
    pixels = x.shape[-1] * x.shape[-2]
    return pixels >= (COMPOSED_NHWC_MIN_PIXELS if dilation == 1 else DILATED_NHWC_MIN_PIXELS)


def reads_every_stride_th_pixel(stride: int, padding: int, dilation: int) -> bool:
    """Whether a convolution with these settings reads only every ``stride``-th row and column of its input: the
    stride equals the dilation and the padding is a multiple of it (a reduction cell's dilated blocks: stride 2,
    dilation 2, padding 2 or 4)."""
    return 1 < stride == dilation and padding % stride == 0


def conv_on_pixels_read(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                        dilation: int, groups: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups)``. Where the stride equals the dilation and the
    padding is a multiple of it (a reduction cell's dilated blocks: stride 2, dilation 2, padding 2 or 4), the
    convolution reads only every ``stride``-th row and column of ``x``; on the CPU it then runs as a stride-1,
    dilation-1 convolution of those pixels (a quarter of ``x``, copied dense): the same function, exactly.
    oneDNN's strided dilated convolution is the slower one: forward+backward on 2 cores, batch 32, NHWC,
    8 x 32x32 -> 32 channels 5x5 6.0 -> 3.3 ms, 3x3 3.1 -> 1.7 ms; 16 x 16x16 -> 64, 5x5 5.1 -> 2.1 ms,
    3x3 2.0 -> 1.2 ms; batch 256, 16 x 16x16 -> 64, 3x3 15.8 -> 6.5 ms. Depthwise (an evaluation network's
    ``DilConv``, :class:`PixelsReadConv2d`), batch 96, 3x3: NHWC 72 x 32x32 76 -> 35 ms, 144 x 16x16 70 -> 6 ms;
    NCHW 72 x 32x32 30 -> 13 ms."""
    if x.device.type == "cpu" and reads_every_stride_th_pixel(stride, padding, dilation):
        return F.conv2d(_TakePixels.apply(x, stride), weight, None, 1, padding // stride, 1, groups)
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


class _TakePixels(torch.autograd.Function):
    """``x[:, :, ::s, ::s]``, copied dense in ``x``'s memory format, whose gradient comes back in that format too:
    autograd's slicing hands NHWC input an NCHW gradient, and the ReLU and BatchNorm backward passes below it
    then run their mixed-layout kernels (a ReLU backward on 32 x 8 x 32x32: 641 us). The backward pass is
    differentiable operations (double backward stays exact)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: int) -> torch.Tensor:
        ctx.s, ctx.shape = s, x.shape
        ctx.layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x[:, :, ::s, ::s].contiguous(memory_format=ctx.layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        out[:, :, ::ctx.s, ::ctx.s] = grad
        return out, None


class PixelsReadConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (no bias, square) whose stride equals its dilation, run by :func:`conv_on_pixels_read`:
    the same function, parameters and ``state_dict``. A reduction cell's ``dil_conv`` depthwise convolution."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding, dilation=stride, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_on_pixels_read(x, self.weight, self.stride[0], self.padding[0], self.dilation[0], self.groups)


def splits_into_phases(x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int, groups: int) -> bool:
    """Whether :class:`DilatedDepthwiseConv2d` (stride 1) runs the backward pass of this convolution on the input's
    phases: on the CPU, for a depthwise convolution (one filter per channel, an odd square kernel) with dilation
    above 1 and the padding that keeps the size (an evaluation network's ``dil_conv`` in a normal cell)."""
    return (x.device.type == "cpu" and x.dim() == 4 and dilation > 1
            and groups == x.shape[1] == weight.shape[0] and weight.shape[-1] == weight.shape[-2]
            and weight.shape[-1] % 2 == 1 and padding == dilation * (weight.shape[-1] - 1) // 2)


def _phases(t: torch.Tensor, d: int, nhwc: bool) -> torch.Tensor:
    """``(N, C, H, W)`` as its ``d x d`` phases ``t[:, :, r::d, s::d]`` stacked into the batch, ``(d*d*N, C, H/d,
    W/d)`` (phase-major), dense in the given layout; ``H`` and ``W`` zero-padded up to multiples of ``d`` first."""
    n, c, height, width = t.shape
    pad_h, pad_w = -height % d, -width % d
    if pad_h or pad_w:
        t = F.pad(t, (0, pad_w, 0, pad_h))
    h, w = (height + pad_h) // d, (width + pad_w) // d
    if nhwc:
        split = t.permute(0, 2, 3, 1).reshape(n, h, d, w, d, c).permute(2, 4, 0, 1, 3, 5)
        return split.reshape(d * d * n, h, w, c).permute(0, 3, 1, 2)
    return t.reshape(n, c, h, d, w, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * n, c, h, w)


def _from_phases(t: torch.Tensor, d: int, shape: torch.Size, nhwc: bool) -> torch.Tensor:
    """The inverse of :func:`_phases`: ``(d*d*N, C, h, w)`` phases back to ``shape`` ``(N, C, H, W)``, in the layout."""
    n, c, height, width = shape
    h, w = t.shape[-2:]
    if nhwc:
        out = t.permute(0, 2, 3, 1).reshape(d, d, n, h, w, c).permute(2, 3, 0, 4, 1, 5).reshape(n, h * d, w * d, c)
        out = out.permute(0, 3, 1, 2)
    else:
        out = t.reshape(d, d, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * d, w * d)
    if (h * d, w * d) != (height, width):
        layout = torch.channels_last if nhwc else torch.contiguous_format
        out = out[:, :, :height, :width].contiguous(memory_format=layout)
    return out


class _PhaseSplitBackward(torch.autograd.Function):
    """A stride-1, dilation-``d`` depthwise convolution whose backward pass runs on the ``d x d`` phases of the input.

    Output row ``d*i + r`` of such a convolution reads input rows ``d*(i + a) + r`` only (likewise columns): on
    phase ``(r, s)`` of the input, ``x[:, :, r::d, s::d]``, it is the same kernel undilated (stride 1, padding
    ``padding / d``). The forward pass is oneDNN's dilated convolution (fast); its dilated backward pass is the
    slow one on the CPU: on 2 AVX2 cores, batch 96, fp32, forward+backward of a 3x3 depthwise convolution,
    dilation 2, NHWC 36 x 32x32 118 -> 27 ms, 72 x 16x16 47 -> 13 ms, 144 x 8x8 34 -> 7 ms; 5x5 36 x 32x32
    188 -> 43 ms; NCHW 36 x 32x32 93 -> 54 ms (``bench/results-eval-cpu.md``). The forward pass stays dilated:
    on the phases it was 3x slower (2.9 -> 10.0 ms at 36 x 32x32). The backward pass is differentiable
    operations (double backward stays exact).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, None, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        d, nhwc = ctx.dilation, is_channels_last(x)
        pad = ctx.padding // d
        # under autocast the forward convolution ran in the gradient's dtype (bf16): so does its backward
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            _phases(grad, d, nhwc), _phases(x.to(grad.dtype), d, nhwc), weight.to(grad.dtype), None, [1, 1],
            [pad, pad], [1, 1], False, [0, 0], weight.shape[0],
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if grad_x is not None:
            grad_x = _from_phases(grad_x, d, x.shape, nhwc).to(x.dtype)
        return grad_x, None if grad_w is None else grad_w.to(weight.dtype), None, None


class DilatedDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (no bias, square, depthwise) with a dilation: where :func:`splits_into_phases` holds and
    a gradient is wanted, its backward pass runs on the input's phases (:class:`_PhaseSplitBackward`): the same
    function, parameters and ``state_dict``. A normal cell's ``dil_conv`` depthwise convolution."""

    def __init__(self, channels: int, kernel: int, padding: int, dilation: int):
        super().__init__(channels, channels, kernel, 1, padding, dilation=dilation, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, dilation = self.padding[0], self.dilation[0]
        if (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and splits_into_phases(x, self.weight, padding, dilation, self.groups)):
            return _PhaseSplitBackward.apply(x, self.weight, padding, dilation)
        return super().forward(x)


def composes_per_edge(x: torch.Tensor, channels: int, kernel: int) -> bool:
    """Whether a per-edge pair (a separable block's second, ``groups=E``) runs as one composed convolution.

    Not on NHWC CPU input, except 5x5 pairs of fewer than 8 channels per edge: there PyTorch's NHWC depthwise
    and grouped 1x1 kernels measured faster than the composed ``C x C x k x k`` kernel, forward and backward
    (``bench/bench_kernels.py --sections 4``: e.g. batch 32, 16 x 8x8, 3x3: 0.55 against 0.75 ms; batch 256,
    8 x 16x16, 5x5: 17.3 against 20.9 ms). The 5x5 pairs of 4 channels measured even at batch 32 and went
    either way at batch 256 between runs (30.2 against 36.5 ms; 41.5 against 36.5 ms), so they stay composed;
    the 3x3 pair of 4 channels at 32x32 is the one case composed measured faster at batch 32 (3.4 against
    4.1 ms) and slower at batch 256 (21.6 against 14.6 ms). Pairs on the shared input always compose: their
    depthwise half would run on ``E`` copies of the input."""
    return not (x.device.type == "cpu" and is_channels_last(x) and (kernel == 3 or channels >= 8))


class GroupedDilConv(Recomputable, nn.Module):
    """``num_edges`` independent DilConv/SepConv blocks on one shared input.

    Weights are stacked edge-major, so channel ``e * C + c`` belongs to edge
    ``e``; the pointwise convs are grouped by edge and the BatchNorms (per
    channel, non-affine) are the per-edge BatchNorms side by side.

    Each depthwise + pointwise pair runs as one convolution whose kernel is
    their product (:func:`composed_kernel`): more multiply-adds at the
    search's few channels per edge, but one kernel, one memory pass and no
    stored intermediate instead of two; PyTorch's CPU kernels for depthwise
    and above all dilated depthwise convs are slow there.
    """

    def __init__(self, channels: int, kernel: int, stride: int, dilation: int, num_edges: int, repeats: int):
        super().__init__()
        self.channels, self.num_edges = channels, num_edges
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        self.padding = dilation * (kernel - 1) // 2
        width = channels * num_edges
        self.depthwise = nn.ParameterList(
            [nn.Parameter(torch.empty(width, 1, kernel, kernel)) for _ in range(repeats)]
        )
        self.pointwise = nn.ParameterList(
            [nn.Parameter(torch.empty(width, channels, 1, 1)) for _ in range(repeats)]
        )
        self.bns = nn.ModuleList([BatchNorm2d(width, affine=False) for _ in range(repeats)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as one nn.Conv2d per edge (kaiming-uniform on each edge's fan-in).
        for weight in list(self.depthwise) + list(self.pointwise):
            for chunk in weight.data.split(weight.shape[0] // self.num_edges):
                nn.init.kaiming_uniform_(chunk, a=5**0.5)

    def rectified_input(self, x: torch.Tensor, prepared: Optional[dict] = None) -> torch.Tensor:
        """``relu(x)`` in the layout the first convolution runs in; ``prepared``: one source state's cache,
        so the separable and dilated blocks reading the same input keep one rectified copy, not one each."""
        nhwc = composed_in_nhwc(x, self.stride, self.dilation)
        key = ("rectified", nhwc)
        if prepared is not None and key in prepared:
            return prepared[key]
        # rectified after the copy: the ReLU's output is the tensor the convolution keeps, one copy kept
        out = F.relu(x.contiguous(memory_format=torch.channels_last) if nhwc else x)
        if prepared is not None:
            prepared[key] = out
        return out

    def _blocks(self, out: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        """From the rectified input: ``(N, E * C, H', W')``, edge-major channels; the last BatchNorm scaled by
        ``scale`` if given."""
        last = len(self.depthwise) - 1
        for i, (dw, pw, bn) in enumerate(zip(self.depthwise, self.pointwise, self.bns)):
            if i:
                if composed_in_nhwc(out, 1, self.dilation):  # (an NHWC block stays NHWC)
                    out = out.contiguous(memory_format=torch.channels_last)
                out = F.relu(out)
            # the first block reads the shared input (one conv C -> E * C); later ones are grouped by edge
            if i == 0:
                out = conv_on_pixels_read(out, composed_kernel(dw, pw, self.num_edges), self.stride, self.padding,
                                          self.dilation)
            elif composes_per_edge(out, self.channels, self.kernel):
                out = F.conv2d(out, composed_kernel(dw, pw, self.num_edges), None, 1, self.padding, self.dilation,
                               groups=self.num_edges)
            else:  # depthwise, then pointwise grouped by edge
                out = F.conv2d(out, dw, None, 1, self.padding, self.dilation, groups=dw.shape[0])
                out = F.conv2d(out, pw, None, 1, 0, 1, groups=self.num_edges)
            out = scaled_batch_norm(bn, out, scale) if i == last and scale is not None else bn(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._blocks(self.rectified_input(x), None)
        out = out if is_channels_last(x) else out.contiguous()
        n, _, h, w = out.shape
        return out.view(n, self.num_edges, self.channels, h, w)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        # channels are edge-major (e * C + c): each edge's weight scales its C channels
        out = self.recomputed(self._blocks, self.rectified_input(x, edges.prepared),
                              weights.repeat_interleave(self.channels))
        edges.add_per_edge(out if is_channels_last(x) else out.contiguous())

    @torch.no_grad()
    def load_from(self, modules: list[nn.Module]) -> None:
        """Copy the weights of per-edge ``SepConv``/``DilConv`` modules into this one."""
        blocks = [list(m) if isinstance(m, SepConv) else [m] for m in modules]
        for i in range(len(self.depthwise)):
            self.depthwise[i].copy_(torch.cat([b[i][1].weight for b in blocks]))
            self.pointwise[i].copy_(torch.cat([b[i][2].weight for b in blocks]))
            bn = self.bns[i]
            bn.running_mean.copy_(torch.cat([b[i][3].running_mean for b in blocks]))
            bn.running_var.copy_(torch.cat([b[i][3].running_var for b in blocks]))


class GroupedFactorizedReduce(Recomputable, nn.Module):
    """``num_edges`` FactorizedReduce blocks on one shared input: two plain convs."""

    def __init__(self, channels: int, num_edges: int):
        super().__init__()
        if channels % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {channels}")
        self.channels, self.num_edges = channels, num_edges
        half = channels // 2 * num_edges
        self.conv_1 = SubsampledConv1x1(channels, half)
        self.conv_2 = SubsampledConv1x1(channels, half)
        self.bn = BatchNorm2d(channels * num_edges, affine=False)

    def _reduce(self, x: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        even, odd = relu_subsampled(x)
        # per edge: [conv_1 channels, conv_2 channels], as in FactorizedReduce
        out = interleave_channels([self.conv_1(even, subsampled=True), self.conv_2(odd, subsampled=True)],
                                  self.num_edges)
        return self.bn(out) if scale is None else scaled_batch_norm(self.bn, out, scale)

    def forward(self, x):
        out = self._reduce(x, None)
        n, _, h, w = out.shape
        return out.view(n, self.num_edges, self.channels, h, w)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        edges.add_per_edge(self.recomputed(self._reduce, x, weights.repeat_interleave(self.channels)))

    @torch.no_grad()
    def load_from(self, modules: list[FactorizedReduce]) -> None:
        self.conv_1.weight.copy_(torch.cat([m.conv_1.weight for m in modules]))
        self.conv_2.weight.copy_(torch.cat([m.conv_2.weight for m in modules]))
        self.bn.running_mean.copy_(torch.cat([m.bn.running_mean for m in modules]))
        self.bn.running_var.copy_(torch.cat([m.bn.running_var for m in modules]))


class MaxPool3x3(nn.MaxPool2d):
    """3x3 max pooling (padding 1) that runs in NHWC on the CPU, the same function.

    PyTorch's CPU kernel for contiguous (NCHW) input is several times slower than its NHWC kernel:
    measured on 2 cores for 64x16x32x32, 13.5 ms forward and 15.8 ms forward+backward in NCHW against
    3.0 ms and 8.1 ms through NHWC, copies included; outputs and gradients bit-identical
    (``tests/test_network.py``). NHWC input of fewer than ``NHWC_POOL_MIN_CHANNELS`` channels is pooled as one
    image of ``N * C`` channels (:class:`_MaxPool3x3Batched`); other NHWC input that needs a gradient runs
    :class:`_MaxPool3x3NHWC` (which keeps less for the backward pass), the rest, and every input on other
    devices, the plain path; NCHW input and channel slices of it (partial channels) come back NCHW.
    """

    def __init__(self, stride: int):
        super().__init__(3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1 and not x.is_contiguous(
                memory_format=torch.channels_last):  # NCHW, or a channel slice of it (partial channels)
            if torch.is_grad_enabled() and x.requires_grad:
                return _MaxPool3x3NHWC.apply(x, self.stride)
            nhwc = x.contiguous(memory_format=torch.channels_last)
            return super().forward(nhwc).contiguous()
        if x.device.type == "cpu" and x.shape[1] < NHWC_POOL_MIN_CHANNELS and is_channels_last(x):
            return _MaxPool3x3Batched.apply(x, self.stride)
        if x.device.type == "cpu" and is_channels_last(x) and torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool3x3NHWC.apply(x, self.stride)
        return super().forward(x)


#: Fewest channels at which PyTorch's NHWC max-pooling kernel, which vectorises over the channels, runs at full
#: speed on the CPU; NHWC input with fewer is pooled as one image of ``N * C`` channels (``_MaxPool3x3Batched``).
NHWC_POOL_MIN_CHANNELS = 8


def _as_one_image(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(1, N * C, H, W)`` NHWC: the batch moved into the channels (one copy)."""
    n, c, h, w = x.shape
    return x.permute(2, 3, 0, 1).contiguous().view(1, h, w, n * c).permute(0, 3, 1, 2)


def _from_one_image(y: torch.Tensor, n: int, c: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The inverse of :func:`_as_one_image`: ``(N, C, H, W)`` in NHWC storage (one copy, into ``dtype`` if given)."""
    h, w = y.shape[-2:]
    nhwc = y.permute(0, 2, 3, 1).view(h, w, n, c).permute(2, 0, 1, 3)
    out = nhwc.contiguous() if dtype is None else torch.empty(nhwc.shape, dtype=dtype, device=y.device).copy_(nhwc)
    return out.permute(0, 3, 1, 2)


def _kept_index_dtype(input_shape: Sequence[int]) -> torch.dtype:
    """The dtype max pooling's indices (a plane's ``row * W + column``, int64) are kept in for the backward pass:
    int32, half the memory and the same values, wherever an input plane holds fewer than 2**31 pixels."""
    return torch.int32 if input_shape[-1] * input_shape[-2] < 2**31 else torch.int64


class _MaxPool3x3Batched(torch.autograd.Function):
    """3x3 max pooling of NHWC input with few channels, pooled as one image whose channels are the batch's
    ``N * C`` planes (PyTorch's NHWC kernel vectorises over the channels: at 4 of them, e.g. 32 x 4 x 32x32,
    0.86 ms against 0.14 ms for the same planes as one image; the EL-DARTS batch-32 step, in-process A/B, 0.648
    -> 0.635 s with this and the bypass pooling's backward without its NCHW detour). The same values and
    indices (a plane's ``row * W + column``); the backward pass runs PyTorch's kernel on the original layout,
    parallel over the batch (on the one image it would run on one thread)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        n, c = x.shape[:2]
        out, index = F.max_pool2d(_as_one_image(x), 3, stride, 1, return_indices=True)
        ctx.save_for_backward(_from_one_image(index, n, c, _kept_index_dtype(x.shape)))
        ctx.input_shape, ctx.stride = x.shape, stride
        return _from_one_image(out, n, c)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (index,) = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        return _max_pool3x3_backward(grad_out, ctx.input_shape, ctx.stride, index.long(), channels_last=True), None


def _stand_in(shape: Sequence[int], like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The input argument of a pooling backward kernel, which reads its sizes only (and its memory format, for
    the gradient's): a stride-0 view, or an uninitialised NHWC tensor."""
    if channels_last:
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)
    return like.new_empty(()).expand(shape)


def _max_pool3x3_backward(grad_out: torch.Tensor, input_shape: Sequence[int], stride: int, index: torch.Tensor,
                          channels_last: bool = False) -> torch.Tensor:
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_out, _stand_in(input_shape, grad_out, channels_last), [3, 3], [stride] * 2, [1, 1], [1, 1], False, index)


def _avg_pool3x3_backward(grad_out: torch.Tensor, input_shape: Sequence[int], stride: int,
                          channels_last: bool = False) -> torch.Tensor:
    return torch.ops.aten.avg_pool2d_backward(grad_out, _stand_in(input_shape, grad_out, channels_last), [3, 3],
                                              [stride] * 2, [1, 1], False, False, None)


class _MaxPool3x3NHWC(torch.autograd.Function):
    """:class:`MaxPool3x3` in NHWC keeping only the indices (as int32, :func:`_kept_index_dtype`) for the backward
    pass: autograd would keep the input too, whose values the backward kernel never reads (EL-DARTS batch 256:
    63 MiB of input and 85 MiB of index bytes less kept). NCHW input (or a channel slice of it) takes an NHWC
    copy and comes back NCHW; NHWC input stays NHWC."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        nhwc = is_channels_last(x)
        out, index = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, stride, 1, return_indices=True)
        ctx.save_for_backward(index.to(_kept_index_dtype(x.shape)))
        ctx.input_shape, ctx.stride, ctx.nhwc = x.shape, stride, nhwc
        return out if nhwc else out.contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (index,) = ctx.saved_tensors
        if ctx.nhwc:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        return _max_pool3x3_backward(grad_out, ctx.input_shape, ctx.stride, index.long(), channels_last=ctx.nhwc), None


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling with stride 2 that keeps, for the backward pass, which of its four pixels each output
    took (int8) instead of the input and PyTorch's int64 indices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, index = F.max_pool2d(x, 2, 2, return_indices=True)  # index: row * W + column in the input plane
        width = x.shape[-1]
        if width & (width - 1) == 0:  # (even) power of two: the row's parity is bit log2(W) of the index, so
            # (index >> (log2(W) - 1)) & 2 is twice it; bit operations run several times faster than // and %
            which = (index >> (width.bit_length() - 2)).bitwise_and_(2).bitwise_or_(index & 1)
        else:
            row = torch.div(index, width, rounding_mode="floor")
            which = (row % 2) * 2 + (index - row * width) % 2
        ctx.save_for_backward(which.to(torch.int8))
        # the gradient NHWC for NHWC input and channel slices of it (the bypass channels of a partial-channel
        # split): an NCHW gradient there sent the split's backward and the BatchNorm below it down their
        # mixed-layout paths (batch 256, 32 x 32x32: 142 ms for one BatchNorm backward)
        ctx.input_shape, ctx.nhwc = x.shape, channels_innermost(x)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (which,) = ctx.saved_tensors
        layout = torch.channels_last if ctx.nhwc else torch.contiguous_format
        grad = torch.empty(ctx.input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=layout)
        for k in range(4):  # the four pixel grids together cover the input: every element written once
            # (where, not masked_fill: that one returns NCHW for NHWC input, then copied into NHWC slices)
            grad[:, :, k // 2::2, k % 2::2] = torch.where(which == k, grad_out, 0.0)
        return grad


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2)`` (the partial-channel bypass of a reduction edge), same values and gradients,
    keeping one byte per output for the backward pass instead of the input and an int64 index (at even
    sizes; odd ones take ``F.max_pool2d``)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2 or not torch.is_grad_enabled() or not x.requires_grad:
        return F.max_pool2d(x, 2, 2)
    return _MaxPool2x2.apply(x)


class _AvgPool3x3(torch.autograd.Function):
    """3x3 average pooling (padding 1, padding not counted) whose backward pass keeps only the input's shape:
    PyTorch's keeps the input itself, and a partial-channel slice then keeps its whole state alive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.input_shape, ctx.stride = x.shape, stride
        return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return _avg_pool3x3_backward(grad_out, ctx.input_shape, ctx.stride), None


class _AvgPool3x3NCHWBackward(_AvgPool3x3):
    """:class:`_AvgPool3x3` of NHWC input whose backward pass runs PyTorch's NCHW kernel: the CUDA NHWC backward
    kernel of torch releases before July 2026 leaves the padding out of its pixel coordinates and returns wrong
    input gradients, silently, whenever the padding is above 0 (pytorch/pytorch#188344, fixed by #188345 on
    2026-07-06). The forward pass (correct in NHWC) and the gradient stay NHWC."""

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad = _avg_pool3x3_backward(grad_out.contiguous(), ctx.input_shape, ctx.stride)
        return grad.contiguous(memory_format=torch.channels_last), None


class AvgPool3x3(nn.AvgPool2d):
    """DARTS' ``avg_pool_3x3`` (padding not counted); on the CPU for NCHW input, :class:`_AvgPool3x3`: the same
    values and gradients, without keeping the input for the backward pass; for NHWC input of few channels
    :class:`_AvgPool3x3Batched`. On other devices NHWC input that needs a gradient takes
    :class:`_AvgPool3x3NCHWBackward` (PyTorch's CUDA NHWC backward kernel is wrong with padding)."""

    def __init__(self, stride: int):
        super().__init__(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4:
            if is_channels_last(x) and x.shape[1] < NHWC_AVG_POOL_MIN_CHANNELS:
                return _AvgPool3x3Batched.apply(x, self.stride)
            if not is_channels_last(x) and torch.is_grad_enabled():
                return _AvgPool3x3.apply(x, self.stride)
        elif x.dim() == 4 and is_channels_last(x) and torch.is_grad_enabled() and x.requires_grad:
            return _AvgPool3x3NCHWBackward.apply(x, self.stride)
        return super().forward(x)


#: Fewest channels at which PyTorch's NHWC average pooling runs at full speed on the CPU; NHWC input with fewer
#: is pooled as one image of ``N * C`` channels (``_AvgPool3x3Batched``).
NHWC_AVG_POOL_MIN_CHANNELS = 16


class _AvgPool3x3Batched(torch.autograd.Function):
    """3x3 average pooling (padding not counted) of NHWC input with few channels, forward and backward on the
    batch as one image of ``N * C`` channels (as :class:`_MaxPool3x3Batched`; e.g. batch 32, 4 x 32x32:
    forward 0.69 against 0.19 ms, backward 0.48 against 0.29 ms, copies included); keeps only the shape."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        n, c = x.shape[:2]
        ctx.input_shape, ctx.stride = x.shape, stride
        return _from_one_image(F.avg_pool2d(_as_one_image(x), 3, stride, 1, count_include_pad=False), n, c)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        n, c, h, w = ctx.input_shape
        grad = _avg_pool3x3_backward(_as_one_image(grad_out), (1, n * c, h, w), ctx.stride, channels_last=True)
        return _from_one_image(grad, n, c), None


class SharedPool(Recomputable, nn.Module):
    """Pooling + non-affine BN (``bn=False``: pooling alone): identical for every edge, so computed once."""

    def __init__(self, channels: int, stride: int, kind: str, bn: bool = True):
        super().__init__()
        if kind == "max":
            self.pool = MaxPool3x3(stride)
        else:
            self.pool = AvgPool3x3(stride)
        self.bn = BatchNorm2d(channels, affine=False) if bn else nn.Identity()

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(x))

    def forward(self, x):
        return self._pooled(x).unsqueeze(1)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        edges.add_shared(self.recomputed(self._pooled, x), weights)

    @torch.no_grad()
    def load_from(self, modules: list[nn.Module]) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.bn.running_mean.copy_(modules[0][1].running_mean)
            self.bn.running_var.copy_(modules[0][1].running_var)


class GroupedReLUConvBN(Recomputable, nn.Module):
    """``num_edges`` ReLU-Conv-BN ops (NAS-Bench-201's ``nor_conv``) on one shared input.

    The edges read the same tensor, so their convolutions are one convolution
    with ``num_edges * C`` output channels (edge-major), and their non-affine
    BatchNorms one BatchNorm over those channels.
    """

    def __init__(self, channels: int, kernel: int, stride: int, num_edges: int):
        super().__init__()
        self.channels, self.num_edges = channels, num_edges
        self.conv = nn.Conv2d(channels, channels * num_edges, kernel, stride, kernel // 2, bias=False)
        self.bn = BatchNorm2d(channels * num_edges, affine=False)
        # Same initialisation as one nn.Conv2d per edge (the fan-in is the same).
        for chunk in self.conv.weight.data.split(channels):
            nn.init.kaiming_uniform_(chunk, a=5**0.5)

    def forward(self, x):
        out = self.bn(self.conv(F.relu(x)))
        n, _, h, w = out.shape
        return out.view(n, self.num_edges, self.channels, h, w)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        # channels are edge-major (e * C + c): each edge's weight scales its C channels, inside the BatchNorm
        edges.add_per_edge(self.recomputed(self._scaled, x, weights.repeat_interleave(self.channels)))

    def _scaled(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scaled_batch_norm(self.bn, self.conv(F.relu(x)), scale)

    @torch.no_grad()
    def load_from(self, modules: list[ReLUConvBN]) -> None:
        self.conv.weight.copy_(torch.cat([m[1].weight for m in modules]))
        self.bn.running_mean.copy_(torch.cat([m[2].running_mean for m in modules]))
        self.bn.running_var.copy_(torch.cat([m[2].running_var for m in modules]))


class SharedIdentity(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        edges.add_shared(x, weights)

    def load_from(self, modules) -> None:
        pass


class PerEdge(Recomputable, nn.Module):
    """Fallback for ops without a grouped form: one module per edge, stacked."""

    def __init__(self, spec: OpSpec, channels: int, stride: int, num_edges: int):
        super().__init__()
        self.edges = nn.ModuleList(search_op(spec, channels, stride) for _ in range(num_edges))

    def forward(self, x):
        return torch.stack([op(x) for op in self.edges], dim=1)

    def mix(self, x: torch.Tensor, weights: torch.Tensor, edges: SourceSums) -> None:
        for e, op in enumerate(self.edges):
            edges.add(e, self.recomputed(op, x, owner=op) * weights[e])

    @torch.no_grad()
    def load_from(self, modules: list[nn.Module]) -> None:
        for mine, theirs in zip(self.edges, modules):
            mine.load_state_dict(theirs.state_dict())


def search_op(spec: OpSpec, channels: int, stride: int, pool_bn: bool = True, plain: bool = False) -> nn.Module:
    """The per-edge module the supernet's math is defined by (``affine=False``).

    ``pool_bn=False`` leaves out the BatchNorm DARTS adds after pooling in the
    supernet (NAS-Bench-201's search cell has none). ``plain=True`` builds the
    public DARTS code's module where eldarts' differs (``OpSpec.build_plain``).
    """
    build = spec.build_plain if plain and spec.build_plain is not None else spec.build
    op = build(channels, stride, False)
    if spec.search_bn and pool_bn:
        op = nn.Sequential(op, BatchNorm2d(channels, affine=False))
    return op


def grouped_op(spec: OpSpec, channels: int, stride: int, num_edges: int, pool_bn: bool = True) -> nn.Module:
    if spec.search_bn and not pool_bn:
        return SharedPool(channels, stride, "max" if spec.name.startswith("max") else "avg", bn=False)
    if spec.build_grouped is not None:
        return spec.build_grouped(channels, stride, num_edges)
    return PerEdge(spec, channels, stride, num_edges)


# --------------------------------------------------------------------------
# Registrations
# --------------------------------------------------------------------------


def _register(name: str, build: OpFactory, grouped: Optional[GroupedFactory] = None, **flags) -> None:
    OPS.register(name, OpSpec(name=name, build=build, build_grouped=grouped, **flags))


_register("none", lambda c, s, affine: Zero(s), parameter_free=True, zero=True)
_register(
    "avg_pool_3x3",
    lambda c, s, affine: AvgPool3x3(s),
    lambda c, s, e: SharedPool(c, s, "avg"),
    parameter_free=True,
    search_bn=True,
)
_register(
    "max_pool_3x3",
    lambda c, s, affine: MaxPool3x3(s),
    lambda c, s, e: SharedPool(c, s, "max"),
    parameter_free=True,
    search_bn=True,
    build_plain=lambda c, s, affine: nn.MaxPool2d(3, stride=s, padding=1),
)
_register(
    "skip_connect",
    lambda c, s, affine: nn.Identity() if s == 1 else FactorizedReduce(c, c, affine),
    lambda c, s, e: SharedIdentity() if s == 1 else GroupedFactorizedReduce(c, e),
    parameter_free=True,  # at stride 1; at stride 2 it is a FactorizedReduce
    build_plain=lambda c, s, affine: nn.Identity() if s == 1 else FactorizedReduce(c, c, affine, plain=True),
)
for _k in (3, 5, 7):
    _register(
        f"sep_conv_{_k}x{_k}",
        lambda c, s, affine, k=_k: SepConv(c, c, k, s, k // 2, affine),
        lambda c, s, e, k=_k: GroupedDilConv(c, k, s, 1, e, repeats=2),
    )
for _k in (3, 5):
    _register(
        f"dil_conv_{_k}x{_k}",
        lambda c, s, affine, k=_k: DilConv(c, c, k, s, k - 1, 2, affine),
        lambda c, s, e, k=_k: GroupedDilConv(c, k, s, 2, e, repeats=1),
        build_plain=lambda c, s, affine, k=_k: DilConv(c, c, k, s, k - 1, 2, affine, plain=True),
    )
_register("conv_7x1_1x7", lambda c, s, affine: Conv7x1x1x7(c, s, affine))
# NAS-Bench-201's convolutions (Dong & Yang, ICLR 2020): ReLU, a plain convolution, BN.
for _k in (1, 3):
    _register(
        f"nor_conv_{_k}x{_k}",
        lambda c, s, affine, k=_k: ReLUConvBN(c, c, k, s, k // 2, affine),
        lambda c, s, e, k=_k: GroupedReLUConvBN(c, k, s, e),
    )
