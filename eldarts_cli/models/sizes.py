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
import math
import warnings

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


def thop_macs(module: nn.Module, example: torch.Tensor) -> int:
    """thop's multiply-accumulate count of one call on ``example`` (on a copy: thop adds buffers and hooks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # thop still uses distutils' LooseVersion
        import thop

        macs, _ = thop.profile(copy.deepcopy(module), inputs=(example,), verbose=False)
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
    """Parameters (M, auxiliary head excluded) and MACs (M, thop and conv+FC) for one ``(C, H, W)`` image."""
    net = copy.deepcopy(getattr(model, "module", model)).cpu().float().eval()
    net = net.to(memory_format=torch.contiguous_format)
    if getattr(net, "auxiliary_head", None) is not None:
        net.auxiliary_head = None
    x = torch.zeros(1, *input_size)
    conv_fc = conv_fc_macs(net, x)
    return {
        "params_m": count_parameters(model) / 1e6,
        "params_with_aux_m": count_parameters(model, include_auxiliary=True) / 1e6,
        "macs_m": thop_macs(net, x) / 1e6,
        "macs_conv_fc_m": conv_fc / 1e6,
    }
