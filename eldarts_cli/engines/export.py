"""What a finished evaluation leaves for deployment: ``weights.pt`` (state dicts + how to rebuild) and ONNX."""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.errors import DivergenceError
from ..core.io import atomic_write_bytes, storage_error
from ..data.datasets import InputShape
from ..models.genotypes import AnyGenotype
from ..runs.checkpoint import nonfinite_tensors


def save_weights(model: nn.Module, ema, network: dict, genotype: AnyGenotype, shape: InputShape, path: Path,
                 normalisation: Optional[dict] = None) -> None:
    """The trained network and what rebuilds it (``network`` is the recipe's ``network`` section), with the input
    it was trained on (``normalisation``: per-channel ``mean`` and ``std`` of pixels scaled to [0, 1]).

    Never written with a non-finite tensor (the training loop stops first; this guards other callers).
    """
    states = {"state_dict": model.state_dict(), "ema_state_dict": ema.module.state_dict() if ema is not None else None}
    bad = nonfinite_tensors(states)
    if bad:
        raise DivergenceError(f"refusing to write {path}: {', '.join(bad[:3])} hold inf or nan", epoch=0)
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "ema_state_dict": {k: v.cpu() for k, v in ema.module.state_dict().items()} if ema is not None else None,
            "genotype": genotype.model_dump(mode="json", exclude_none=True),
            "network": network,
            "input": {"channels": shape.channels, "size": shape.size, "num_classes": shape.num_classes,
                      **(normalisation or {})},
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def export_onnx(model: nn.Module, shape: InputShape, path: Path) -> Optional[str]:
    """Export the network (eval mode, no auxiliary head) to ONNX; ``None`` if the exporter fails (it cannot export
    some op), :class:`StorageError` if the file cannot be written."""
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, shape.channels, shape.size, shape.size)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (x,), str(tmp), dynamo=False, opset_version=17,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        os.replace(tmp, path)
    except OSError as error:  # a full or read-only disk is no exporter gap: the run stops, resumable, to write it
        tmp.unlink(missing_ok=True)
        raise storage_error(error, path) from None
    except Exception as error:  # an exporter gap must not lose a finished training run
        tmp.unlink(missing_ok=True)
        warnings.warn(f"ONNX export failed ({type(error).__name__}: {error}); the weights are in weights.pt")
        return None
    return path.name
