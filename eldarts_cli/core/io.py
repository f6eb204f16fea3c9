"""Atomic file writes, JSON and tensor files.

* A kill at any moment leaves the old file or the new one, never half of one.
* A write that fails (full or read-only disk, permissions) raises
  :class:`StorageError` naming the file, and leaves the old file as it was.
* JSON is strict: a non-finite float is written as ``null``, never as a bare
  ``NaN``/``Infinity`` token that other JSON readers reject.
* Tensor files (checkpoints, weights, caches) are read with
  ``torch.load(weights_only=True)``: tensors and plain data only, so a file
  from elsewhere cannot run code when it is opened.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from .errors import EldartsError, StorageError

_UMASK = os.umask(0)
os.umask(_UMASK)


def storage_error(error: OSError, path: Path | str, doing: str = "write") -> StorageError:
    """One line for a failed write: the file and the system's reason (``No space left on device``)."""
    reason = error.strerror or str(error)
    return StorageError(f"cannot {doing} {path}: {reason}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(error, OSError):
            raise storage_error(error, path) from None
        raise


_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_write_bytes' mkstemp names


def remove_stale_temporaries(folder: Path, older_than: float = 0.0) -> list[Path]:
    """The temporary files of atomic writes that a killed process left in ``folder`` (not below it), removed.
    Where no other process writes (a run folder being resumed), all of them; where others may (an ablation
    folder, shared by its shards), only those last written more than ``older_than`` seconds ago (an atomic write
    holds its temporary file for milliseconds)."""
    removed = []
    now = time.time()
    for entry in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
        if entry.is_file() and _TEMPORARY.fullmatch(entry.name) and now - entry.stat().st_mtime >= older_than:
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def text_bytes(text: str) -> bytes:
    """``text`` as UTF-8; a path's bytes that are no UTF-8 (Python's surrogates, a Latin-1 ``café`` folder) as
    ``\\udce9``, so that writing a table that names such a path does not fail (a traceback at every run's end)."""
    return text.encode("utf-8", errors="backslashreplace")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text_bytes(text))


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def json_text(data: Any, indent: int | None = 2) -> str:
    """Strict JSON (non-finite floats as ``null``)."""
    return json.dumps(finite_json(data), indent=indent, default=str, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json_text(data) + "\n")


class NonFiniteJSON(json.JSONDecodeError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in JSON text: eldarts never writes them (:func:`json_text`)."""


def _no_constant(name: str) -> Any:
    raise NonFiniteJSON(f"{name} is not a number eldarts writes (strict JSON)", name, 0)


def parse_json(text: str | bytes) -> Any:
    """JSON text as eldarts writes it: ``NaN`` and ``Infinity`` (which Python's reader accepts) are a
    :class:`NonFiniteJSON` (a ``json.JSONDecodeError``), so that a non-finite value edited into a run file is
    never shown as measured."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: Path) -> Any:
    """A JSON file as eldarts writes them (:func:`parse_json`), read as UTF-8 whatever the locale; a byte-order
    mark (a Windows editor's) is passed over (it was "Unexpected UTF-8 BOM")."""
    return parse_json(Path(path).read_text(encoding="utf-8-sig"))


def load_tensors(path: Path | str, *, what: str, error: type[EldartsError], map_location: Any = "cpu",
                 damaged: Optional[type[EldartsError]] = None) -> Any:
    """``torch.load`` of a file a user may have downloaded: tensors and plain data only.

    ``what`` names the expected content in messages (``an eldarts checkpoint``);
    every failure is an ``error`` with one line, never a traceback, and a
    file that asks to build other objects is refused without running anything.
    With ``damaged``, a file that torch's reader cannot read back (a truncated or
    corrupted archive) is that error, called damaged (for files eldarts wrote, such
    as a run's checkpoint).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        # torch's notes on a foreign file ("Detected pickle protocol 4 ...") would precede the one line below
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch\.(serialization|_weights_only_unpickler)")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not {what}") from None
    except pickle.UnpicklingError as failure:
        if "GLOBAL" in str(failure):  # torch names the class it refused to build
            raise error(
                f"{path} is not {what}: it asks to build Python objects other than tensors and plain data, "
                "which eldarts refuses to unpickle (unpickling them could run code)"
            ) from None
        raise error(f"{path} is not {what}: corrupted, truncated or another kind of file") from None
    except OSError as failure:
        if failure.errno not in (None, errno.EINVAL):  # the disk or the permissions: the file may be fine
            raise error(f"cannot read {path}: {failure.strerror or failure}") from None
        damage = failure  # torch's reader on a truncated archive: "[Errno 22] Invalid argument"
    except MemoryError:
        raise
    except Exception as failure:  # truncated zip, random bytes, wrong format: all one message
        damage = failure
    first = str(damage).splitlines()[0] if str(damage) else type(damage).__name__
    first = first.split(". ")[0]  # torch's reader adds paragraphs of advice to the line that says what failed
    why = f"corrupted or truncated ({type(damage).__name__}: {first})"
    if damaged is not None:
        raise damaged(f"{path} is damaged: {why}") from None
    raise error(f"{path} is not {what}: {why}") from None


def quiet_matplotlib_config() -> None:
    """Before matplotlib is first imported: its notes on a configuration folder it cannot write (HOME read-only:
    "mkdir -p failed ...", "Matplotlib created a temporary cache directory ...") were two raw lines on every run
    that drew a figure; it works in a temporary folder, which serves eldarts' figures. Other notes of its stay."""
    import logging

    logger = logging.getLogger("matplotlib")
    if not any(getattr(f, "eldarts", False) for f in logger.filters):
        def keep(record: logging.LogRecord) -> bool:
            text = record.getMessage()
            return not ("mkdir -p failed" in text or "temporary cache directory" in text or "MPLCONFIGDIR" in text)

        keep.eldarts = True  # type: ignore[attr-defined]
        logger.addFilter(keep)
