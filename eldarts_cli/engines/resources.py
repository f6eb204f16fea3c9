"""Resource sanity before any work: is the network too large for the device, are the images too small for it?

Called by ``--dry-run`` and at the start of every search and evaluation,
before the network is built at full size (``models.sizes.estimate_footprint``
builds small copies and extrapolates), so ``network.layers=100000`` or
``network.channels=100000`` is refused in a second with a message instead of
filling the memory.

Two limits: a run refuses a network whose estimated training memory at its
batch exceeds its device's memory (it could not finish); ``--dry-run``, which
may be inspecting a recipe meant for a larger machine, refuses only a network
that could not train even one image at a time on the largest memory it knows
of (the device's or this machine's), or whose ``copies`` built on this
machine to count its MACs would not fit here.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..core.device import device_memory, format_bytes
from ..core.errors import RecipeError, ResourceError
from ..models.sizes import Builder, Footprint, InputTooSmall, estimate_footprint, nearest_inputs, smallest_input


def check_network_fits(
    build: Builder,
    *,
    layers: int,
    channels: int,
    channel_multiple: int,
    input_size: tuple[int, int],
    batch: int,
    device: Optional[torch.device],
    what: str,
    amp: bool = False,
    dry_run: bool = False,
    copies: int = 0,
    activation_scale: float = 1.0,
    headroom: float = 1.0,
    footprint: Optional[Footprint] = None,
    lower_first: Optional[str] = None,
    other_setting: Optional[str] = None,
) -> Footprint:
    """The network's :class:`Footprint`; :class:`ResourceError` if training it at ``batch`` needs more
    memory than ``device`` has (``dry_run``: at batch 1, on the largest memory known), :class:`RecipeError`
    if ``input_size`` is too small for it. ``activation_scale``: the share of the activations kept for the
    backward pass (below 1 when blocks recompute theirs, ``runtime.recompute``); ``headroom``: refuse
    unless ``headroom`` times the estimate fits (to ask "will it fit with room to spare", not "can it");
    ``footprint``: this network's estimate, made by an earlier call (not made again); ``lower_first``: the
    setting to lower named first (``network.num_classes (N)`` where the classifier holds most parameters);
    ``other_setting``: a network setting that may run on sizes this one cannot (said where the size is refused)."""
    in_channels, size = input_size
    try:
        if footprint is None:
            footprint = estimate_footprint(build, layers=layers, channels=channels,
                                           channel_multiple=channel_multiple, input_size=input_size)
    except InputTooSmall as error:
        minimum = smallest_input(build, in_channels, channel_multiple)
        if minimum is not None and minimum <= size:  # not the size: small copies run on smaller images
            cause = str(error.__cause__ or error).splitlines()[0][:200]
            near = nearest_inputs(build, in_channels, channel_multiple, size)
            # (it said "another data.image_size may do", without which: 18 fails where 16 and 20 run)
            if not near:
                raise RecipeError(f"this {what} cannot run on {size}x{size} images ({cause}); another "
                                  "data.image_size may do, or another network setting") from None
            setting = f" ({other_setting})" if other_setting else ""
            raise RecipeError(
                f"this {what} cannot run on {size}x{size} images; it runs on "
                f"{' and '.join(f'{n}x{n}' for n in near)}: set data.image_size="
                f"{min(near, key=lambda n: (abs(n - size), n))} (the images are resized), or change the network"
                f"{setting}. (PyTorch said: {cause})"
            ) from None
        need = f"at least {minimum}x{minimum}" if minimum else "larger images"
        raise RecipeError(
            f"{size}x{size} images are too small for this {what}: its reduction cells need {need}; "
            f"set data.image_size={minimum or 32} (images are resized once, in memory)"
        ) from None
    limit = device_memory(device) if device is not None else None
    where = "the memory this process may use" if device is None or device.type == "cpu" else f"{device}'s memory"
    if dry_run:
        cpu = device_memory(torch.device("cpu"))
        inspect = copies * footprint.model_bytes() + 4 * footprint.activations_per_image
        if copies and cpu is not None and inspect > cpu:
            raise ResourceError(
                f"the {what} is too large to build here: about {format_bytes(inspect)} to count its size "
                f"({footprint.params / 1e6:,.1f}M parameters in {footprint.modules:,} modules; estimated), but "
                f"the memory this process may use is {format_bytes(cpu)}; lower "
                + (f"{lower_first}, " if lower_first else "") + f"network.channels ({channels}) or "
                f"network.layers ({layers})"
            )
        if cpu is not None and (limit is None or cpu > limit):
            limit, where = cpu, "the memory this process may use"
        batch = 1
    activations = round(activation_scale * (footprint.training_bytes(batch, activation_bytes=2 if amp else 4)
                                            - footprint.training_bytes(0)))
    needed = footprint.training_bytes(0) + activations
    if limit is not None and needed * headroom > limit:
        lower = "network.channels ({channels}) or network.layers ({layers})" if dry_run else \
            "network.channels ({channels}), network.layers ({layers}) or data.batch_size ({batch})"
        raise ResourceError(
            f"the {what} is too large to train: about {format_bytes(needed)} at batch {batch} "
            f"({footprint.params / 1e6:,.1f}M parameters in {footprint.modules:,} modules, with their gradients and "
            f"optimiser state, plus {format_bytes(activations)} of activations"
            f"{' kept while its op blocks recompute theirs' if activation_scale < 1 else ''}; estimated), but "
            f"{where} is "
            f"{format_bytes(limit)}; lower " + (f"{lower_first}, " if lower_first else "")
            + lower.format(channels=channels, layers=layers, batch=batch)
        )
    return footprint
