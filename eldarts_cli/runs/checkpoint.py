"""Checkpoints: atomic, finite, and read without running code.

* A kill during a save never corrupts the last good checkpoint (written to a
  temporary file, then renamed).
* A checkpoint with a non-finite tensor is never written: a diverged run
  keeps its last finite checkpoint for ``--resume``.
* Reading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors
  and plain data only (the recipe as JSON types, state dicts of the model,
  the optimisers, the GradScaler and timm's EMA, the RNG state as a byte
  tensor), so no other type needs allowing; a file that asks to build any
  other object is refused as "not an eldarts checkpoint" and nothing in it runs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ..core.errors import CheckpointError, DamagedCheckpoint, DataError, DivergenceError
from ..core.io import atomic_write_bytes, load_tensors

FORMAT_VERSION = 1

#: Keys every checkpoint of a kind holds (checked on reading, so a foreign file fails with one line).
REQUIRED_KEYS = {
    "search": ("epoch", "recipe", "model", "w_opt", "a_opt", "w_scaler", "a_scaler", "elapsed"),
    # (the random state: "rng", one per rank, or "rng_cpu", rank 0's, before every rank's was kept)
    "evaluate": ("epoch", "recipe", "model", "optimizer", "scaler", "genotype", "wall_time_s"),
}


def _tensors(data: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(data, torch.Tensor):
        yield prefix, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from _tensors(value, f"{prefix}[{i}]")


def nonfinite_tensors(data: Any) -> list[str]:
    """Names of the floating-point tensors in ``data`` (a state dict, nested) that hold inf or nan.

    One device synchronisation for all of them, not one per tensor.
    """
    named = [(name, t) for name, t in _tensors(data) if t.is_floating_point() or t.is_complex()]
    if not named:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    finite = [True] * len(named)
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).tolist()
        for i, ok in zip(indices, flags):
            finite[i] = ok
    return [name for (name, _), ok in zip(named, finite) if not ok]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    bad = nonfinite_tensors(state)
    if bad:  # the engines check first and say why; this guards every other writer
        raise DivergenceError(
            f"refusing to write {path}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold inf or nan; "
            + ("the previous checkpoint is kept" if Path(path).exists() else "nothing was saved"),
            epoch=int(state.get("epoch", 0)),
        )
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def loads_into(model: torch.nn.Module, state: dict) -> bool:
    """Whether ``model`` takes the state dict ``state`` (loaded into it where it does)."""
    try:
        model.load_state_dict(state)
    except RuntimeError:
        return False
    return True


def check_same_input(run_dir: Path, saved: Optional[dict], now: dict, fits: Callable[[], bool]) -> None:
    """A resume on data of other images or classes: ``data.root`` may change on ``--resume`` (the same dataset in
    another place), not the data. ``saved``/``now``: ``{"channels", "size", "classes", "images"}`` of the
    checkpoint's data and of the data read now (``images``: the training split's, before ``data.limit``; a
    checkpoint from before it was kept lacks it, and it is not compared); ``saved`` None (a checkpoint from before
    any was saved): ``fits()`` says whether the saved network takes this data's shapes (classes, channels). Another
    class count had failed in ``load_state_dict`` with torch's words; a tree grown by 50 images resumed on a
    reshuffled split without a word. Other images of the same count and shape cannot be told apart."""
    if saved is None:
        if fits():
            return
        saved = {}
    shape = ("channels", "size", "classes")
    if any(saved.get(key) != now.get(key) for key in shape):
        def said(d: dict) -> str:
            return (f"{d['classes']} classes of {d['channels']}x{d['size']}x{d['size']} images" if d else
                    "other classes or channels")
        raise DataError(f"cannot resume {run_dir}: its data now holds {said(now)}, the run was trained on "
                        f"{said(saved)}; data.root may change on --resume only to the same dataset in another place")
    if saved.get("images") is not None and saved["images"] != now.get("images"):
        raise DataError(f"cannot resume {run_dir}: its training data now holds {now.get('images'):,} images, the run "
                        f"was trained on {saved['images']:,} (before data.limit); data.root may change on --resume "
                        "only to the same dataset in another place: give the data the run started with, or start "
                        "a new run")


def _check_intact(path: Path, state: dict[str, Any]) -> None:
    """Damage that torch's reader lets through: bytes changed inside a tensor's storage (its zip reader skips the
    checksums) or a non-finite tensor, which eldarts never saves. Read as they were, the resume diverged at once and
    was blamed on the learning rate, at every lower one ("the last finite state")."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):  # (torch has read it: not a zip archive to check)
        broken = None
    if broken is not None:
        raise DamagedCheckpoint(f"{path} is damaged: its stored checksum does not match member {broken}")
    bad = nonfinite_tensors(state)
    if bad:
        raise DamagedCheckpoint(f"{path} is damaged: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold inf "
                                "or nan (eldarts never saves such a checkpoint)")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", kind: Optional[str] = None) -> dict[str, Any]:
    """The checkpoint at ``path``; with ``kind`` (``search``, ``evaluate``) it must be one of that kind."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = load_tensors(path, what="an eldarts checkpoint", error=CheckpointError, map_location=map_location,
                         damaged=DamagedCheckpoint)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an eldarts checkpoint (format {FORMAT_VERSION})")
    _check_intact(path, state)
    if kind is not None:
        if state.get("kind") != kind:
            raise CheckpointError(f"{path} is not an eldarts {kind} checkpoint (kind: {state.get('kind')!r})")
        missing = [key for key in REQUIRED_KEYS[kind] if key not in state]
        if missing or not isinstance(state.get("recipe"), dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(
                f"{path} is not an eldarts {kind} checkpoint: it lacks {', '.join(missing) or 'a recipe or model'}"
            )
    return state
