"""Atomic checkpoints: a kill during a save never corrupts the last good one."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError
from ..core.io import atomic_write_bytes

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not an eldarts checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'unreadable'})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not an eldarts checkpoint (format {FORMAT_VERSION})")
    return state
