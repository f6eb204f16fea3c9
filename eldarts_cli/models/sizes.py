"""Model size: parameters and multiply-adds (MACs), as the paper's Tables 1-2 report them.

``params_m`` leaves the auxiliary head out, as papers do. ``macs_m`` is
thop's count at batch 1 in eval mode without the auxiliary head: thop counts
multiply-adds of convs and linear layers *and* of BatchNorm, pooling and
element-wise additions, so it is larger than a conv+FC-only count
(``macs_conv_fc_m``, also reported); neither is exactly the figure papers
print (DARTS_V2 at 224x224: published 574M).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

MACS_CONVENTION = (
    "thop 'MACs' at batch 1, eval mode, auxiliary head excluded: multiply-adds of conv and linear layers "
    "plus thop's counts for BatchNorm, pooling and additions; macs_conv_fc_m counts conv and linear only"
)


def count_parameters(model: nn.Module, *, include_auxiliary: bool = False) -> int:
    """Parameters of ``model``; the auxiliary head is left out by default, as papers report."""
    model = getattr(model, "module", model)
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if include_auxiliary or not name.startswith("auxiliary_head.")
    )


@functools.total_ordering
class _LooseVersion:
    """What thop uses of ``distutils.version.LooseVersion``: version strings ordered part by part, numbers as
    numbers (and before words, where distutils' own comparison fails in Python 3)."""

    def __init__(self, text: str):
        parts = (p for p in re.split(r"(\d+|[a-z]+|\.)", str(text)) if p and p != ".")
        self.key = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]

    @staticmethod
    def _key(other) -> list:
        return (other if isinstance(other, _LooseVersion) else _LooseVersion(other)).key

    def __eq__(self, other) -> bool:
        return self.key == self._key(other)

    def __lt__(self, other) -> bool:
        return self.key < self._key(other)


def _import_thop():
    """``import thop``. thop imports ``distutils.version.LooseVersion``, and Python 3.12 has no ``distutils`` (nor has
    a venv without setuptools): there thop's import gets a stand-in module with :class:`_LooseVersion` (it compares
    torch's version), removed again after, so MAC counts work on every Python eldarts supports."""
    if "thop" in sys.modules:
        return sys.modules["thop"]
    stand_ins = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # distutils, where it exists, warns on import
        try:
            import distutils.version  # noqa: F401
        except ImportError:
            version = types.ModuleType("distutils.version")
            version.LooseVersion = _LooseVersion
            package = types.ModuleType("distutils")
            package.version = version
            stand_ins = {"distutils": package, "distutils.version": version}
        missing = object()
        saved = {name: sys.modules.get(name, missing) for name in stand_ins}
        sys.modules.update(stand_ins)
        try:
            import thop
        finally:
            for name, module in saved.items():
                if module is missing:
                    del sys.modules[name]
                else:
                    sys.modules[name] = module
    return thop


def thop_macs(module: nn.Module, example: torch.Tensor) -> int:
    """thop's multiply-accumulate count of one call on ``example`` (on a copy: thop adds buffers and hooks)."""
    thop = _import_thop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        from thop.vision.basic_hooks import count_avgpool, count_convNd, count_normalization

        from .norm import BatchNorm2d
        from .ops import AvgPool3x3, DilatedDepthwiseConv2d, PixelsReadConv2d, SubsampledConv1x1

        # thop finds its counting rules by exact module type: eldarts' subclasses count as their bases do
        macs, _ = thop.profile(copy.deepcopy(module), inputs=(example,), verbose=False,
                               custom_ops={BatchNorm2d: count_normalization, SubsampledConv1x1: count_convNd,
                                           PixelsReadConv2d: count_convNd, DilatedDepthwiseConv2d: count_convNd,
                                           AvgPool3x3: count_avgpool})
    return int(macs)


def conv_fc_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of convolutions and linear layers only, for the batch ``x``."""
    total = 0

    def conv(module: nn.Conv2d, _, out):
        nonlocal total
        total += out[0].numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear(module: nn.Linear, _, out):
        nonlocal total
        total += out[0].numel() * module.in_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def count_params_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Parameters (M, auxiliary head excluded; ``params`` the exact count) and MACs (M, thop and conv+FC) for one
    ``(C, H, W)`` image."""
    net = copy.deepcopy(getattr(model, "module", model)).cpu().float().eval()
    net = net.to(memory_format=torch.contiguous_format)
    if getattr(net, "auxiliary_head", None) is not None:
        net.auxiliary_head = None
    x = torch.zeros(1, *input_size)
    conv_fc = conv_fc_macs(net, x)
    params = count_parameters(model)
    return {
        "params": params,
        "params_m": params / 1e6,
        "params_with_aux_m": count_parameters(model, include_auxiliary=True) / 1e6,
        "macs_m": thop_macs(net, x) / 1e6,
        "macs_conv_fc_m": conv_fc / 1e6,
    }


# ---------------------------------------------------------------------------
# Estimates before building: is a network too large for the machine?
# ---------------------------------------------------------------------------

#: ``build(layers, channels) -> nn.Module``: the network of a recipe at another depth and width.
Builder = Callable[[int, int], nn.Module]


class InputTooSmall(ValueError):
    """The network cannot run on images this small (its reductions leave nothing to pool or convolve)."""

    def __init__(self, size: int, minimum: Optional[int]):
        super().__init__(f"{size}x{size} images are too small")
        self.size, self.minimum = size, minimum


#: Host memory of one ``nn.Module`` with its parameter objects, beyond the numbers it holds: about 3.4 KB
#: measured for DARTS_V2 cells (CPU, torch 2.x); 2 KB keeps the estimate on the low side. It is what a
#: 100,000-cell network of tiny width spends its memory on.
MODULE_BYTES = 2000


@dataclass(frozen=True)
class Footprint:
    """Parameters, modules and activations (per image) of a network, without building it at full size."""

    params: int
    activations_per_image: int
    modules: int
    exact: bool  # measured at the full size, not extrapolated

    def model_bytes(self) -> int:
        """One copy of the built network: fp32 weights and the module objects."""
        return 4 * self.params + MODULE_BYTES * self.modules

    def training_bytes(self, batch: int, optimizer_copies: int = 2, activation_bytes: int = 4) -> int:
        """The network, fp32 gradients and ``optimizer_copies`` optimiser states, plus the activations
        autograd keeps for the backward pass at ``batch``: a lower estimate, not a measurement."""
        return (self.model_bytes() + 4 * self.params * (1 + optimizer_copies)
                + activation_bytes * batch * self.activations_per_image)


def kept_for_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``model(x)``: what a training step
    holds at its peak beyond the weights. Counted once per storage (views of one tensor share it);
    the model's parameters and buffers are not counted."""
    own = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def _measure(build: Builder, layers: int, channels: int, in_channels: int, size: int,
             forward: bool = True) -> tuple[int, int, int]:
    """(parameters, activation elements per image, modules) of a small network: built on the CPU, one
    forward of two images in train mode (auxiliary heads included); activations are what autograd keeps
    for the backward pass, in 4-byte elements."""
    model = build(layers, channels)
    params = sum(p.numel() for p in model.parameters())
    modules = sum(1 for _ in model.modules())
    if not forward:
        return params, 0, modules
    try:
        kept = kept_for_backward(model.train(), torch.zeros(2, in_channels, size, size))
    except RuntimeError as error:
        raise InputTooSmall(size, None) from error
    return params, kept // 4 // 2, modules


def _fit(points: list[tuple[int, int]], x: int, degree: int) -> float:
    """Polynomial through ``points`` (exactly ``degree + 1`` of them), evaluated at ``x`` (Lagrange)."""
    total = 0.0
    for i, (xi, yi) in enumerate(points[: degree + 1]):
        term = float(yi)
        for j, (xj, _) in enumerate(points[: degree + 1]):
            if j != i:
                term *= (x - xj) / (xi - xj)
        total += term
    return total


def estimate_footprint(build: Builder, *, layers: int, channels: int, channel_multiple: int,
                       input_size: tuple[int, int]) -> Footprint:
    """Parameters and activations of ``build(layers, channels)`` at ``input_size = (channels, pixels)``.

    A network of up to 24 cells and width 64 is measured as it is. A larger one is
    never built: its counts are extrapolated from small copies, exactly for
    the cell networks here (parameters are quadratic in the width and, for a
    depth of the same remainder mod 3, linear in the number of cells, since
    the two reduction cells sit at 1/3 and 2/3; activations are linear in both).
    ``network.layers=100000`` is estimated in a fraction of a second.
    :class:`InputTooSmall` if the network cannot run on images this small.
    """
    in_channels, size = input_size
    small_layers = layers <= 24
    small_channels = channels <= 64
    if small_layers and small_channels:
        params, acts, modules = _measure(build, layers, channels, in_channels, size)
        return Footprint(params, acts, modules, exact=True)
    depths = [layers] if small_layers else [6 + layers % 3, 9 + layers % 3]
    widths = [channels] if small_channels else [channel_multiple * k for k in (1, 2, 3)]
    params_at, acts_at, modules_at = [], [], []
    for depth in depths:
        # activations are linear in the width: two forwards suffice; parameters need a third width
        measured = [(w, *_measure(build, depth, w, in_channels, size, forward=i < 2)) for i, w in enumerate(widths)]
        params_at.append((depth, round(_fit([(w, p) for w, p, _, _ in measured], channels, len(widths) - 1))))
        acts_at.append((depth, round(_fit([(w, a) for w, _, a, _ in measured], channels, min(1, len(widths) - 1)))))
        modules_at.append((depth, measured[0][3]))  # the module count does not depend on the width
    params = round(_fit(params_at, layers, len(depths) - 1))
    acts = round(_fit(acts_at, layers, len(depths) - 1))
    modules = round(_fit(modules_at, layers, len(depths) - 1))
    return Footprint(params, acts, modules, exact=False)


def _runs_on(build: Builder, in_channels: int, channels: int, size: int) -> bool:
    """Whether a small copy (3 cells, ``channels`` wide) runs on ``size`` x ``size`` images."""
    try:
        _measure(build, 3, channels, in_channels, size)
        return True
    except InputTooSmall:
        return False


def smallest_input(build: Builder, in_channels: int, channels: int, *, limit: int = 1024) -> Optional[int]:
    """The smallest square image size a small copy (3 cells, ``channels`` wide) runs on; ``None`` above ``limit``."""

    def runs(size: int) -> bool:
        return _runs_on(build, in_channels, channels, size)

    high = 1
    while not runs(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2  # does not run (or 0); bisect between, reductions make this monotonic
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    return high


def nearest_inputs(build: Builder, in_channels: int, channels: int, size: int, *, span: int = 16) -> list[int]:
    """The image sizes nearest ``size`` (below and above it, within ``span``) that a small copy runs on: a network
    whose reductions need sizes of some multiple (a partial-channel bypass pooled 2x2 needs an even map) fails on
    sizes between ones it runs on."""
    def runs(candidate: int) -> bool:
        return _runs_on(build, in_channels, channels, candidate)

    below = next((c for c in range(size - 1, max(0, size - span) - 1, -1) if c > 0 and runs(c)), None)
    above = next((c for c in range(size + 1, size + span + 1) if runs(c)), None)
    return [c for c in (below, above) if c is not None]


def recompute_share(build: Builder, in_channels: int, size: int, *, layers: int, channels: int,
                    channel_multiple: int) -> float:
    """Measured share of the activation memory a network keeps for its backward pass when its blocks
    recompute theirs (``ops.set_recompute``), against keeping all: one forward of two images through a
    copy of at most 8 cells (of the same depth mod 3, as ``estimate_footprint``'s copies: NAS-Bench-201's
    network needs a multiple of 3) and width about 16 (:func:`kept_for_backward`)."""
    from .ops import set_recompute

    width = channels if channels <= 16 else channel_multiple * max(1, 16 // channel_multiple)
    model = build(layers if layers <= 8 else 6 + layers % 3, width).train()
    x = torch.zeros(2, in_channels, size, size)
    set_recompute(model, False)
    full = kept_for_backward(model, x)
    set_recompute(model, True)
    return kept_for_backward(model, x) / full if full else 1.0
