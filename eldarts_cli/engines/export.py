"""What a finished evaluation leaves for deployment: ``weights.pt`` (state dicts + how to rebuild) and ONNX."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.errors import DivergenceError
from ..core.io import atomic_write_bytes
from ..data.datasets import InputShape
from ..models.genotypes import AnyGenotype
from ..runs.checkpoint import nonfinite_tensors


def save_weights(model: nn.Module, ema, network: dict, genotype: AnyGenotype, shape: InputShape, path: Path,
                 normalisation: Optional[dict] = None, classes: Optional[list[str]] = None) -> None:
    """The trained network and what rebuilds it (``network`` is the recipe's ``network`` section), with the input
    it was trained on (``normalisation``: per-channel ``mean`` and ``std`` of pixels scaled to [0, 1]) and its
    ``classes`` in the order of its outputs.

    Never written with a non-finite tensor (the training loop stops first; this guards other callers).
    """
    write_weights(path, model.state_dict(), ema.module.state_dict() if ema is not None else None, network, genotype,
                  {"channels": shape.channels, "size": shape.size, "num_classes": shape.num_classes,
                   **(normalisation or {}), **({"classes": list(classes)} if classes else {})})


def write_weights(path: Path, state: dict, ema_state: Optional[dict], network: dict, genotype: AnyGenotype,
                  shape: dict) -> None:
    """``weights.pt`` of the state dicts given (:func:`save_weights`'s format); never with a non-finite tensor."""
    bad = nonfinite_tensors({"state_dict": state, "ema_state_dict": ema_state})
    if bad:
        raise DivergenceError(f"refusing to write {path}: {', '.join(bad[:3])} hold inf or nan", epoch=0)
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": {k: v.cpu() for k, v in state.items()},
            "ema_state_dict": {k: v.cpu() for k, v in ema_state.items()} if ema_state is not None else None,
            "genotype": genotype.model_dump(mode="json", exclude_none=True),
            "network": network,
            "input": shape,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def restore_weights(folder: Path) -> bool:
    """A finished evaluation whose ``weights.pt`` was deleted: write it again from ``checkpoint.pt``, which holds
    the network after its last epoch, as it was saved (True if written). Only where ``results.json`` says the run
    saved weights, the checkpoint is of its last epoch, and ``genotype.json`` is there; a file there is left."""
    from ..models.genotypes import load_genotype
    from ..runs.checkpoint import load_checkpoint
    from ..runs.files import EvalResults

    folder = Path(folder)
    path = folder / "weights.pt"
    results = EvalResults.read(folder)
    if path.exists() or results.weights != "weights.pt" or not (folder / "checkpoint.pt").is_file() \
            or not (folder / "genotype.json").is_file():
        return False
    state = load_checkpoint(folder / "checkpoint.pt", kind="evaluate")
    if state.get("epoch") != results.epochs:
        return False
    saved = state.get("input") or {}
    shape = {"channels": saved.get("channels"), "size": saved.get("size"), "num_classes": saved.get("classes"),
             **({"mean": results.input_mean, "std": results.input_std} if results.input_mean is not None else {}),
             **({"classes": results.classes} if results.classes else {})}
    write_weights(path, state["model"], state.get("ema"), state["recipe"]["network"],
                  load_genotype(folder / "genotype.json"), shape)
    return True


def restore_onnx(folder: Path) -> bool:
    """A finished evaluation whose ``model.onnx`` was deleted: export it again from ``weights.pt`` (the network's
    own weights, as the run exported them; True if written). Only where ``results.json`` names the file."""
    from ..api import load_trained
    from ..runs.files import EvalResults

    folder = Path(folder)
    results = EvalResults.read(folder)
    if results.onnx is None or (folder / results.onnx).exists() or not (folder / "weights.pt").is_file():
        return False
    channels, size = results.input_size[0], results.input_size[-1]
    return export_onnx(load_trained(folder), InputShape(channels, size, results.num_classes),
                       folder / results.onnx) is not None


def export_onnx(model: nn.Module, shape: InputShape, path: Path) -> Optional[str]:
    """Export the network (eval mode, no auxiliary head) to ONNX; ``None`` if the exporter fails (it cannot export
    some op), :class:`StorageError` if the file cannot be written."""
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, shape.channels, shape.size, shape.size)
    buffer = io.BytesIO()  # (the exporter took a path as text: a folder named in bytes that are no UTF-8 failed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (x,), buffer, dynamo=False, opset_version=17,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as error:  # an exporter gap must not lose a finished training run
        # (its first line: the whole message quoted the graph and every weight, 100 KB)
        first = (str(error).strip().splitlines() or [""])[0][:300]
        warnings.warn(f"ONNX export failed ({type(error).__name__}: {first}); the weights are in weights.pt")
        return None
    # a full or read-only disk is no exporter gap: a StorageError, and the run stops, resumable, to write it
    atomic_write_bytes(path, buffer.getvalue())
    return path.name
