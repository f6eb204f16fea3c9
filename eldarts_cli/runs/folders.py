"""Run folders: what a folder holds, the rules for creating and resuming one, per-epoch logs (JSONL + CSV)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, TypeVar

from ..core.errors import RunFolderError
from ..core.io import atomic_write_text
from .files import AblationState, EvalResults, RunRecord, SearchSummary, search_finished

R = TypeVar("R", bound=RunRecord)

#: Files whose presence marks a folder as holding a run.
RUN_MARKERS = ("recipe.yaml", "checkpoint.pt", "metrics.jsonl")

FolderKind = Literal["search", "evaluation", "ablation"]


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
        raise RunFolderError(f"{out} already holds a run; resume it with --resume {out}, or choose another --out")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _recipe_sections(folder: Path) -> set[str]:
    import yaml

    try:
        data = yaml.safe_load((folder / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def folder_kind(folder: Path) -> FolderKind:
    """``search``, ``evaluation`` or ``ablation``; :class:`RunFolderError` for anything else.

    A half-written run (started, no ``summary.json``/``results.json``) is an
    error that says what is missing and how to resume it.
    """
    folder = Path(folder)
    if not folder.exists():
        raise RunFolderError(f"{folder} does not exist")
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a run folder")
    if AblationState.exists(folder):
        return "ablation"
    if search_finished(folder):
        return "search"
    if EvalResults.exists(folder):
        return "evaluation"
    started = [name for name in RUN_MARKERS if (folder / name).exists()]
    if started:
        epochs = len(read_metrics(folder))
        is_search = "search" in _recipe_sections(folder) or (folder / "alphas.jsonl").exists()
        what, done, command = (
            ("search", SearchSummary.FILE, f"eldarts search {folder / 'recipe.yaml'} --resume {folder}")
            if is_search
            else ("evaluation", EvalResults.FILE, f"eldarts evaluate ... --resume {folder}")
        )
        raise RunFolderError(
            f"{folder} holds a half-written {what} run ({', '.join(started)} present, {epochs} epoch(s) logged, "
            f"no {done}); finish it first"
            + (f": {command}" if "checkpoint.pt" in started else " (it has no checkpoint.pt: start it again)")
        )
    raise RunFolderError(
        f"{folder} holds no run: expected {SearchSummary.FILE} (a search run), {EvalResults.FILE} (an evaluation "
        f"run) or {AblationState.FILE} (an ablation)"
    )


def require_kind(folder: Path, kind: FolderKind) -> None:
    found = folder_kind(folder)
    if found != kind:
        article = "an" if found[0] in "ae" else "a"
        raise RunFolderError(f"{folder} holds {article} {found} run, not a {kind} run")


# ---------------------------------------------------------------------------
# Per-epoch logs
# ---------------------------------------------------------------------------


def scalar_columns(row: dict) -> list[dict]:
    """The default CSV view of a row: its scalar fields (lists and mappings stay in the JSONL file)."""
    return [{k: v for k, v in row.items() if not isinstance(v, (dict, list))}]


class MetricsLogger:
    """Appends one row per epoch to ``<name>.jsonl`` and rewrites ``<name>.csv``.

    ``csv_rows`` turns one logged row into the CSV's rows (default: its
    scalar fields). On resume, rows from epochs at or after the resumed epoch
    are dropped so the files hold each epoch once.
    """

    def __init__(self, folder: Path, name: str = "metrics", start_epoch: int = 0,
                 csv_rows: Callable[[dict], list[dict]] = scalar_columns):
        self.jsonl = Path(folder) / f"{name}.jsonl"
        self.csv = Path(folder) / f"{name}.csv"
        self.csv_rows = csv_rows
        self.rows: list[dict] = [row for row in _read_jsonl(self.jsonl) if row.get("epoch", -1) < start_epoch]
        if self.jsonl.exists():
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, row: RunRecord | dict) -> None:
        data = row.dump() if isinstance(row, RunRecord) else dict(row)
        self.rows.append(data)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(data) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        table = [line for row in self.rows for line in self.csv_rows(row)]
        fields: list[str] = []
        for line in table:
            fields += [key for key in line if key not in fields]
        tmp = self.csv.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)
        os.replace(tmp, self.csv)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(folder: Path, name: str = "metrics", model: Optional[type[R]] = None) -> list:
    """Rows of ``<folder>/<name>.jsonl``: plain dicts, or instances of ``model`` (a :class:`RunRecord`)."""
    path = Path(folder) / f"{name}.jsonl"
    rows = _read_jsonl(path)
    if model is None:
        return rows
    return [model.parse(row, f"{path} (epoch {row.get('epoch', '?')})") for row in rows]


def last_row(rows: Sequence[R]) -> Optional[R]:
    return rows[-1] if rows else None
