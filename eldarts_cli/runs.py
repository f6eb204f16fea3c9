"""Run folders: creation rules, atomic writes, per-epoch metrics (JSONL + CSV)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunFolderError

#: Files whose presence marks a folder as holding a run.
RUN_MARKERS = ("recipe.yaml", "checkpoint.pt", "metrics.jsonl")

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in RUN_MARKERS)


def prepare_run_dir(out: Path, resume: bool) -> Path:
    """Create ``out`` for a new run, or check it holds one when resuming.

    An existing run is never overwritten silently: a new run into it is refused.
    """
    out = Path(out)
    if resume:
        if not out.is_dir():
            raise RunFolderError(f"cannot resume: {out} does not exist")
        if not (out / "checkpoint.pt").exists():
            raise RunFolderError(f"cannot resume: {out} holds no checkpoint.pt (was the run started?)")
        return out
    if holds_run(out):
        raise RunFolderError(
            f"{out} already holds a run; resume it with --resume {out}, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


class MetricsLogger:
    """Appends one row per epoch to ``metrics.jsonl`` and rewrites ``metrics.csv``.

    On resume, rows from epochs at or after the resumed epoch are dropped so
    the files hold each epoch once.
    """

    def __init__(self, folder: Path, name: str = "metrics", start_epoch: int = 0):
        self.jsonl = Path(folder) / f"{name}.jsonl"
        self.csv = Path(folder) / f"{name}.csv"
        self.rows: list[dict] = []
        if self.jsonl.exists():
            for line in self.jsonl.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if row.get("epoch", -1) < start_epoch:
                    self.rows.append(row)
            self._rewrite_jsonl()

    def _rewrite_jsonl(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        fields: list[str] = []
        for row in self.rows:
            for key, value in row.items():
                if key not in fields and not isinstance(value, (dict, list)):
                    fields.append(key)
        tmp = self.csv.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv)


def read_metrics(folder: Path, name: str = "metrics") -> list[dict]:
    path = Path(folder) / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
