"""Errors that the CLI turns into one clear message and a non-zero exit code.

Library code raises these (never ``sys.exit``); ``eldarts_cli.cli`` catches
``EldartsError`` and prints ``error: <message>`` without a traceback.
Exit code 2 means the input is at fault (recipe, folder, file given); 1 means
the run met a fault while working (divergence, a full or read-only disk).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Sequence


class EldartsError(Exception):
    """Base class of every user-facing error. ``exit_code`` is what the CLI returns.

    ``hint`` is a second line the CLI prints under the message (e.g. the
    exact command that continues the run); commands set it, the library does not.
    """

    exit_code = 2
    hint: Optional[str] = None


class RecipeError(EldartsError):
    """A recipe file or override that does not validate."""


class GenotypeError(EldartsError):
    """A genotype file or name that cannot be used."""


class DataError(EldartsError):
    """A dataset that is missing or malformed."""


class RunFolderError(EldartsError):
    """An output folder that already holds a run, one eldarts did not create, or a folder that holds none."""


class CheckpointError(EldartsError):
    """A checkpoint that is missing, corrupted, or from another run."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read back (corrupted or truncated: a disk fault, a copy cut short): no run
    can continue from it."""


class ResourceError(EldartsError):
    """A network or batch too large for the device, refused before any work."""


class OutOfMemory(EldartsError):
    """The device ran out of memory in the middle of a run (its checkpoints so far are kept)."""

    exit_code = 1


def is_out_of_memory(error: BaseException) -> bool:
    """A ``MemoryError``, or PyTorch's out-of-memory error on any device (CUDA: "out of memory"; the CPU
    allocator: "can't allocate memory")."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class GraphCaptureError(EldartsError):
    """A step that CUDA could not record as a graph (``runtime.cuda_graphs``), in the middle of a run (its
    checkpoints so far are kept)."""

    exit_code = 1


class StorageError(EldartsError):
    """A file that could not be written: a full or read-only disk, missing permissions."""

    exit_code = 1


class DivergenceError(EldartsError):
    """Training produced a non-finite loss or weights; nothing of that epoch was saved.

    ``epoch`` counts from 1; ``changes`` are ``--set`` values that continue the
    run more safely (e.g. ``optim.lr=0.01``).
    """

    exit_code = 1

    def __init__(self, message: str, *, epoch: int, changes: Sequence[str] = ()):
        super().__init__(message)
        self.epoch = epoch
        self.changes = list(changes)


class DistributedError(EldartsError):
    """The processes of a torchrun launch disagree (architectures that drifted apart) or cannot work together."""

    exit_code = 1


@contextlib.contextmanager
def refused_here(planning: bool, then: str = "") -> Iterator[None]:
    """A check of what a run refuses at its start (a device, the data): its :class:`EldartsError` as is; while
    ``planning`` (a ``--dry-run``, which may size a run for another machine) a warning instead, that a run here
    would be refused, and ``then`` (what the plan does instead)."""
    try:
        yield
    except EldartsError as error:
        if not planning:
            raise
        warnings.warn(f"{error}; a run here would be refused{then}")
