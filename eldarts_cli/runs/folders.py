"""Run folders: what a folder holds, the rules for creating and resuming one, per-epoch logs (JSONL + CSV).

The rules, for every command that writes a run (search, evaluate, ablate):

* a new run goes into a folder that does not exist yet or is empty; eldarts
  writes a marker file (:data:`MARKER`) there first, so that it can later
  tell its own folders from anyone else's;
* a folder that is not empty and holds no eldarts run is never written
  into (a user's ``metrics.csv`` or ``weights.pt`` stays as it is);
* a folder that holds a run is only continued, with ``--resume``; folders
  written before the marker existed are recognised by their recipe and checkpoint;
* a default folder is ``runs/<name>...``, whatever the recipe's or genotype's name says.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, TypeVar

from ..config.base import recipe_kind_of
from ..core.errors import DivergenceError, RunFolderError, StorageError
from ..core.io import (NonFiniteJSON, atomic_write_bytes, atomic_write_text, json_text, parse_json,
                      remove_stale_temporaries)
from ..core.io import storage_error
from .files import AblationState, EvalResults, RunRecord, SearchSummary, check_summary, search_finished

R = TypeVar("R", bound=RunRecord)

#: Files whose presence marks a folder as holding a run.
RUN_MARKERS = ("recipe.yaml", "checkpoint.pt", "metrics.jsonl")
#: Written first into every folder eldarts creates for a run: ``{"kind": ..., "created": ...}``.
MARKER = ".eldarts-run.json"
#: Where runs go when no ``--out`` is given.
RUNS_ROOT = Path("runs")

FolderKind = Literal["search", "evaluation", "ablation"]


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in RUN_MARKERS)


def _marker(folder: Path) -> dict:
    """The folder's marker, or ``{}`` (no marker, or unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def note_divergence(folder: Path, changes: Sequence[str]) -> None:
    """Record in the folder's marker that its run diverged, with the ``--set`` values that continue it (a lower
    learning rate): the commands that later send the user back to the run (``evaluate RUN`` of an unfinished
    search) gave its plain resume, which diverged again. Nothing where the folder has no marker."""
    data = _marker(folder)
    if data:
        atomic_write_text(Path(folder) / MARKER, json_text({**data, "diverged": list(changes)}) + "\n")


@contextlib.contextmanager
def divergence_noted(folder: Path, main: bool = True) -> Iterator[None]:
    """A :class:`DivergenceError` inside is noted in ``folder``'s marker (:func:`note_divergence`; by rank 0 alone,
    ``main``), then raised."""
    try:
        yield
    except DivergenceError as error:
        if main:
            note_divergence(folder, error.changes)
        raise


def divergence_changes(folder: Path) -> Optional[list[str]]:
    """The ``--set`` values a diverged run continues with (:func:`note_divergence`); ``None`` if it did not diverge
    (or has saved an epoch since)."""
    changes = _marker(folder).get("diverged")
    return [str(c) for c in changes] if isinstance(changes, list) else None


def clear_divergence(folder: Path) -> None:
    """The run saved an epoch since it diverged: its resume needs no other setting."""
    data = _marker(folder)
    if "diverged" in data:
        data.pop("diverged")
        atomic_write_text(Path(folder) / MARKER, json_text(data) + "\n")


def marker_kind(folder: Path) -> Optional[str]:
    """The kind written in the folder's marker, or ``None`` (no marker, or unreadable)."""
    return _marker(folder).get("kind")


def _readable(model, folder: Path) -> bool:
    try:
        model.read(folder)
        return True
    except RunFolderError:
        return False


def _legacy_kind(folder: Path) -> Optional[str]:
    """The kind of a run folder written before markers existed: by its final files (valid ones, not just
    files of that name) or, for one stopped before them, its recipe.yaml beside a checkpoint (a recipe.yaml alone
    is as likely a user's own file: such a folder is not taken for a run, so nothing in it is overwritten)."""
    if AblationState.exists(folder) and _readable(AblationState, folder):
        return "ablation"
    if SearchSummary.exists(folder) and _readable(SearchSummary, folder):
        return "search"
    if EvalResults.exists(folder) and _readable(EvalResults, folder):
        return "evaluation"
    if not ((folder / "recipe.yaml").is_file() and (folder / "checkpoint.pt").is_file()):
        return None
    return recipe_kind_of(run_recipe(folder))


def run_kind(folder: Path) -> Optional[str]:
    """``search``, ``evaluation`` or ``ablation`` for a folder eldarts made; ``None`` for any other."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return marker_kind(folder) or _legacy_kind(folder)


def mark_run_dir(folder: Path, kind: str, made_folder: bool = True, made_parents: int = 0) -> None:
    """Write the marker (once): the folder is an eldarts run of ``kind``; ``made_folder``: eldarts created the
    folder (False: an empty folder given as ``--out``, which a run that never started leaves in place);
    ``made_parents``: how many folders above it eldarts created for it (``--out deep/a/b``), removed with it."""
    if not (Path(folder) / MARKER).exists():
        created = _dt.datetime.now().isoformat(timespec="seconds")
        atomic_write_text(Path(folder) / MARKER, json_text({"kind": kind, "created": created, "format": 1,
                                                            "made_folder": made_folder,
                                                            "made_parents": made_parents}) + "\n")


REPORT_MARKER = ".eldarts-report"  # in a folder report made inside a folder without MARKER


def check_report_targets(folder: Path, names: Sequence[str]) -> None:
    """``eldarts report`` writes figures and tables (``names``, relative to ``folder``) into a run folder: freely
    into one eldarts marked as its own, but into any other (a run from before markers, or a folder someone copied
    run files into) only where none of them exists yet, or where report made the folder (:data:`REPORT_MARKER`):
    eldarts never overwrites a file it may not have written."""
    folder = Path(folder)
    if (folder / MARKER).exists():
        return
    present = [name for name in names if (folder / name).exists() and not (folder / name / REPORT_MARKER).exists()
               and not ReportFiles.wrote(folder, name)]
    if present:
        raise RunFolderError(
            f"{folder} has no eldarts marker ({MARKER}) and already holds {', '.join(present)}; eldarts never "
            f"overwrites files it may not have written: move {'them' if len(present) > 1 else 'it'} away and run "
            f"report again")


def check_report_folder(folder: Path, name: str) -> None:
    """Refuse, before anything is written, a file of ``folder / name`` where report makes its folder of that name
    (mkdir said "File exists", exit 1, after an ablation's tables were written)."""
    out = Path(folder) / name
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file, not a folder: report writes its {name}/ folder there; move the file "
                             "away and run report again")


def make_report_folder(folder: Path, name: str) -> Path:
    """``folder / name`` for report's files, created if missing; marked as report's own inside a folder without
    :data:`MARKER` (after :func:`check_report_targets`)."""
    check_report_folder(folder, name)
    out = Path(folder) / name
    out.mkdir(exist_ok=True)
    if not (Path(folder) / MARKER).exists() and not (out / REPORT_MARKER).exists():
        atomic_write_text(out / REPORT_MARKER, "written by eldarts report\n")
    return out


#: In a report folder (``figures/``): the files eldarts wrote there, by name, with the SHA-256 of what it wrote.
WRITTEN = ".eldarts-written.json"
WRITTEN_LOCK = ".eldarts-written.lock"  # (held while the record is read and changed)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReportFiles:
    """The files of a folder report writes into (``figures/``, an ablation's ``table3.*``) that eldarts wrote, so
    that it replaces (or removes) only those: a file of the user's, or one of eldarts' changed since, is never
    overwritten. The record (:data:`WRITTEN`) lists, per name, the contents eldarts wrote there; a name's next
    contents are added before a write and the old dropped after it, so a report killed in between leaves either
    accepted. Without a record (a folder of an earlier version, or one the user made) no file there is taken
    for eldarts': one under a name report writes is named, to be moved away."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.written: dict[str, list[str]] = self.read(self.folder)

    @staticmethod
    def read(folder: Path) -> dict[str, list[str]]:
        record = Path(folder) / WRITTEN
        if not record.exists():
            return {}
        try:
            data = parse_json(record.read_text())
            return {str(k): [str(h) for h in v] for k, v in data.items()}
        except (ValueError, AttributeError, TypeError) as error:
            raise RunFolderError(f"{record} is damaged ({error}); it lists the files report wrote in {folder}: "
                                 "move away the files of its names you want to keep, remove the record, and run "
                                 "report again") from None

    @classmethod
    def wrote(cls, folder: Path, name: str) -> bool:
        """Whether ``folder / name`` holds what report wrote there (read without changing anything)."""
        path = Path(folder) / name
        return path.is_file() and _digest(path.read_bytes()) in cls.read(folder).get(name, [])

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def _save(self) -> None:
        atomic_write_text(self.folder / WRITTEN, json_text(self.written) + "\n")

    def ours(self, path: Path) -> bool:
        """Whether ``path`` holds what eldarts wrote there (a missing file: free to write)."""
        return not path.exists() or _digest(path.read_bytes()) in self.written.get(path.name, [])

    def foreign(self, names: Callable[[str], bool]) -> list[str]:
        """The files whose name the report may write (``names``) that eldarts did not write, or that changed."""
        return [p.name for p in self._files() if names(p.name) and not self.ours(p)]

    def check(self, names: Callable[[str], bool]) -> None:
        """Refuse, before anything is written, where a file whose name the report may write (``names``) is not
        one eldarts wrote, or was changed since."""
        foreign = self.foreign(names)
        if foreign:
            raise RunFolderError(
                f"{self.folder} holds {', '.join(foreign)}, which eldarts did not write (or which changed since it "
                f"did), under {'names' if len(foreign) > 1 else 'a name'} report writes; eldarts never overwrites "
                f"files it did not write: move {'them' if len(foreign) > 1 else 'it'} away and run report again")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The record read afresh and changed under an exclusive lock (``flock`` of :data:`WRITTEN_LOCK`): two
        processes reporting into one folder at once (two ablation shards ending together) each saved its own copy
        of the record, dropping the other's entries, and every later report refused the ablation's own tables.
        Where there is no flock (Windows), unlocked."""
        try:
            import fcntl
        except ImportError:
            fcntl = None
        with open(self.folder / WRITTEN_LOCK, "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self.written = self.read(self.folder)
            yield  # (the lock goes with the file's closing)

    def write(self, path: Path, data: bytes) -> None:
        with self._locked():
            if not self.ours(path):
                raise RunFolderError(f"{path} is not a file eldarts wrote (or it changed since); eldarts never "
                                     "overwrites files it did not write: move it away and run report again")
            new = _digest(data)
            self.written[path.name] = [*self.written.get(path.name, []), new]
            self._save()
            atomic_write_bytes(path, data)
            self.written[path.name] = [new]
            self._save()

    def remove(self, path: Path) -> None:
        """Remove an earlier report's ``path`` (a figure not drawn this time); a file eldarts did not write stays."""
        with self._locked():
            if path.exists() and path.name in self.written and self.ours(path):
                path.unlink()
                self.written.pop(path.name, None)
                self._save()


def _article(kind: str) -> str:
    return "an" if kind[0] in "ae" else "a"


def _dangling_link(path: Path) -> Optional[Path]:
    """``path`` or the first of its parents that is a symbolic link to a missing target; ``None`` if none is."""
    return next((p for p in (*reversed(path.parents), path) if p.is_symlink() and not p.exists()), None)


def check_run_dir(out: Path, *, resume: bool, kind: str = "search", busy: bool = False) -> None:
    """The folder rules above, without touching anything (commands check before loading data); ``busy``: also refuse
    a folder to resume that another process runs now (what :func:`run_lock` refuses; asked before this process
    takes the lock, as a dry run does)."""
    out = Path(out)
    if (link := _dangling_link(out)) is not None:  # mkdir said "File exists"; nothing is created through it
        what = f"{link}{'' if link == out else f' (in {out})'} is a symbolic link to {os.readlink(link)}, which does " \
            "not exist"
        if resume:
            raise RunFolderError(f"cannot resume: {what}")
        raise RunFolderError(f"{what}; eldarts does not create a run folder through it: create its target first, or "
                             "give another --out")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    up = next((Path(*out.parts[:index]) for index, part in enumerate(out.parts)
               if part == ".." and index and not Path(*out.parts[:index]).is_dir()), None)
    if not resume and up is not None:
        # (mkdir of a/b/.. made a/b inside a, and then refused a as a folder holding more than its marker)
        raise RunFolderError(f"--out {out} goes up ('..') from {up}, which is not a folder (yet): give the folder "
                             f"itself, --out {shlex.quote(os.path.normpath(out))}")
    found = run_kind(out)
    if resume:
        if not out.is_dir():
            raise RunFolderError(f"cannot resume: {out} does not exist")
        if found is None:
            raise RunFolderError(f"cannot resume: {out} holds no eldarts {kind} run")
        if found != kind:
            raise RunFolderError(f"cannot resume: {out} holds {_article(found)} {found} run, not {_article(kind)} {kind} run")
        if busy and being_run(out):
            raise _being_run_error(out)
        return
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):  # (the run refused it; its dry run passed)
        raise RunFolderError(f"cannot use {out} as a run folder: it is not writable (permission denied or a "
                             "read-only file system)")
    if out.is_dir() and [entry.name for entry in out.iterdir()] == [MARKER]:
        return  # made for a run that was stopped before it wrote anything: start it (again)
    if found is not None or (out.is_dir() and (out / MARKER).exists()):
        what = f"{_article(found)} {found}" if found else "a"
        hint = (f"resume it with --resume {shlex.quote(str(out))}, or choose another --out" if found == kind
                else "choose another --out")
        raise RunFolderError(f"{out} already holds {what} run; {hint}")
    if out.is_dir() and any(out.iterdir()):
        raise RunFolderError(
            f"{out} is a folder eldarts did not create and it is not empty; eldarts never writes into such "
            f"a folder: give --out a new or empty folder"
        )
    if not out.exists():  # what mkdir would meet, asked without creating anything (a dry run checks this too)
        above = next((p for p in out.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RunFolderError(f"cannot create the run folder {out}: {above} is a file, not a folder")
        if above is not None and not os.access(above, os.W_OK | os.X_OK):
            raise RunFolderError(f"cannot create the run folder {out}: {above} is not writable (permission denied or "
                                 "a read-only file system)")


def prepare_run_dir(out: Path, resume: bool, kind: str = "search",
                    hold: Optional[contextlib.ExitStack] = None) -> Path:
    """Create ``out`` for a new run (and mark it), or check that it holds a run of ``kind`` to resume. With
    ``hold``, the folder is locked for this process (:func:`run_lock`) until ``hold`` closes, before anything in
    it is touched."""
    out = Path(out)
    check_run_dir(out, resume=resume, kind=kind)
    made = not out.exists()
    parents = sum(1 for _ in itertools.takewhile(lambda p: not p.exists(), out.absolute().parents)) if made else 0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create the run folder {out}: {error.strerror or error}") from None
    try:
        mark_run_dir(out, kind, made_folder=made, made_parents=parents)  # also on resuming a folder from before markers
    except StorageError as error:  # a read-only or full disk before the run began: the folder is the problem
        raise RunFolderError(f"cannot use {out} as a run folder: {error}") from None
    if hold is not None:
        hold.enter_context(run_lock(out, resume=resume))
    if resume:  # what a killed process left half-written (never read: every file is renamed into place)
        for folder in (out, out / "figures"):
            remove_stale_temporaries(folder)
    return out


def _marker_lock(folder: Path) -> Optional[tuple[Any, int]]:
    """``(fcntl, fd)``: the folder's marker opened for :func:`run_lock`'s ``flock``; ``None`` where there is no
    flock (Windows) or no marker."""
    try:
        import fcntl

        return fcntl, os.open(Path(folder) / MARKER, os.O_RDONLY)
    except (ImportError, OSError):
        return None


def being_run(folder: Path) -> bool:
    """Whether another process holds ``folder``'s :func:`run_lock` now (a search or evaluation in progress)."""
    opened = _marker_lock(folder)
    if opened is None:
        return False
    fcntl, fd = opened
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once: only asks whether someone holds it
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _being_run_error(folder: Path, resume: bool = True) -> RunFolderError:
    """``resume``: this command resumes the folder (else it was to start a new run there, and lost the folder to
    another process starting one at the same moment: resuming would continue that process's run, not start its
    own)."""
    then = "then resume" if resume else "or give --out another folder for this run"
    return RunFolderError(f"{folder} is being run by another eldarts process now (a run folder is run by one process "
                          f"at a time): wait for that process to end, or stop it, {then}")


@contextlib.contextmanager
def run_lock(folder: Path, resume: bool = True) -> Iterator[None]:
    """Inside, this process runs ``folder``: another eldarts process that would run it at the same time (two
    ``--resume`` of one folder) is refused with :class:`RunFolderError`. An advisory lock (``flock``) on the
    folder's marker, which the system drops when the process ends, however it ends: no stale lock after a kill.
    Where there is no flock (Windows, a filesystem without locks), nothing is locked."""
    opened = _marker_lock(folder)
    if opened is None:
        yield
        return
    fcntl, fd = opened
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _being_run_error(folder, resume) from None
        except OSError:
            pass  # no locks on this filesystem
        yield
    finally:
        os.close(fd)


def remove_unused_run_dir(folder: Path) -> bool:
    """Remove a run folder that holds nothing but its marker (a run that never started); True if removed. A folder
    eldarts did not create (an empty one given as ``--out``, with the user's permissions) is left, empty as it was
    given: it was removed too."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
        if [e.name for e in entries] == [MARKER]:
            marker = _marker(folder)
            made = marker.get("made_folder", True)  # (unreadable, or from before it was recorded: made)
            parents = marker.get("made_parents", 0)
            entries[0].unlink()
            if made is not False:
                folder.rmdir()
                # the folders made above it for it (--out deep/a/b refused at its start left deep/a/), where empty
                try:
                    for above in list(folder.absolute().parents)[:parents if isinstance(parents, int) else 0]:
                        above.rmdir()
                except OSError:  # not empty: something was put there since, kept
                    pass
                return True
    except OSError:
        pass
    return False


def run_folder_name(*parts: Optional[str]) -> str:
    """A folder name from ``parts`` (joined by ``-``) that stays one folder: anything but letters, digits
    and ``._+=-`` becomes ``-``, so a genotype named ``../../x`` cannot place a run elsewhere."""
    name = "-".join(p for p in parts if p)
    name = re.sub(r"[^A-Za-z0-9._+=-]+|\.{2,}", "-", name)
    name = re.sub(r"-{2,}", "-", name).strip(".-")[:120]
    return name or "run"


def default_run_dir(*parts: Optional[str]) -> Path:
    return RUNS_ROOT / run_folder_name(*parts)


def run_recipe(folder: Path) -> dict:
    """A run's ``recipe.yaml`` as written (``{}`` where it is missing or unreadable): what reports read of it."""
    import yaml

    try:
        data = yaml.safe_load((folder / "recipe.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def recipe_dataset(folder: Path) -> Optional[str]:
    """The dataset a run's ``recipe.yaml`` names, or ``None`` (no readable recipe)."""
    data = run_recipe(Path(folder)).get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    return dataset if isinstance(dataset, str) else None


def _recipe_sections(folder: Path) -> set[str]:
    return set(run_recipe(folder))


def folder_kind(folder: Path, then: str = "report it") -> FolderKind:
    """``search``, ``evaluation`` or ``ablation``; :class:`RunFolderError` for anything else.

    A half-written run (started, no ``summary.json``/``results.json``) is an
    error that says what is missing and how to resume it; one another process runs now, an error that says to
    wait, then ``then``.
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
    if SearchSummary.exists(folder):  # there, but unreadable: said as such (not "holds no run", not "half-written");
        (check_summary if started else SearchSummary.read)(folder)  # in eldarts' run, how to have it written again
    kind = run_kind(folder) or (marker_kind(folder) if started else None)
    if started and kind != "ablation":
        epochs = len(read_metrics(folder))
        is_search = kind == "search" or "search" in _recipe_sections(folder) or (folder / "alphas.jsonl").exists()
        what, done, command = (
            ("search", SearchSummary.FILE, shlex.join(["eldarts", "search", str(folder / "recipe.yaml"), "--resume",
                                                       str(folder)]))
            if is_search
            else ("evaluation", EvalResults.FILE,
                  shlex.join(["eldarts", "evaluate", str(folder / "genotype.json"), str(folder / "recipe.yaml"),
                              "--resume", str(folder)]))
        )
        if being_run(folder):  # its resume would be refused: another process runs it now
            raise RunFolderError(f"{folder} holds a {what} that another eldarts process is running now ({epochs} "
                                 f"epoch(s) logged, no {done} yet); {then} once it has finished")
        missing = f"{done} not marked finished" if (folder / done).exists() else f"no {done}"
        finish = "finish it first"
        if (changes := divergence_changes(folder)) is not None:  # (its plain resume diverged again)
            command += "".join(f" --set {shlex.quote(change)}" for change in changes)
            finish = "it diverged: finish it first with a lower learning rate"
        raise RunFolderError(
            f"{folder} holds a half-written {what} run ({', '.join(started)} present, {epochs} epoch(s) logged, "
            f"{missing}); {finish}: {command}"
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
    are dropped so the files hold each epoch once; rows missing from the epochs
    before it (``first_epoch`` is the first epoch's number: 0 for a search, 1 for
    an evaluation) are a warning, since the run's curves and tables will lack them.
    """

    def __init__(self, folder: Path, name: str = "metrics", start_epoch: int = 0,
                 csv_rows: Callable[[dict], list[dict]] = scalar_columns, first_epoch: int = 0):
        self.jsonl = Path(folder) / f"{name}.jsonl"
        self.csv = Path(folder) / f"{name}.csv"
        self.csv_rows = csv_rows
        self.rows: list[dict] = [row for row in _read_jsonl(self.jsonl) if row.get("epoch", -1) < start_epoch]
        logged = {row.get("epoch") for row in self.rows}
        missing = [epoch - first_epoch + 1 for epoch in range(first_epoch, start_epoch) if epoch not in logged]
        if missing:  # lines deleted or cut by hand, or a damaged file: the run goes on, without those rows
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            warnings.warn(f"{self.jsonl} has no row for {len(missing)} of the {start_epoch - first_epoch} epochs "
                          f"saved before (epoch {shown}); the run continues from its checkpoint, and its curves "
                          f"and tables will lack them", stacklevel=2)
        if self.jsonl.exists():
            atomic_write_text(self.jsonl, "".join(json_text(r, indent=None) + "\n" for r in self.rows))

    def log(self, row: RunRecord | dict) -> None:
        data = row.dump() if isinstance(row, RunRecord) else dict(row)
        self.rows.append(data)
        try:
            with open(self.jsonl, "a") as f:
                f.write(json_text(data, indent=None) + "\n")
        except OSError as error:
            raise storage_error(error, self.jsonl) from None
        self._write_csv()

    def _write_csv(self) -> None:
        table = [line for row in self.rows for line in self.csv_rows(row)]
        fields: list[str] = []
        for line in table:
            fields += [key for key in line if key not in fields]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
        atomic_write_text(self.csv, text.getvalue())


def _read_jsonl(path: Path) -> list[dict]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise RunFolderError(f"cannot read {path}: {error.strerror or error}") from None
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except NonFiniteJSON as error:  # refused as read_json refuses it: never shown as measured
            raise RunFolderError(f"{path}, line {number}: {error.msg}; the file is damaged (eldarts writes a "
                                 "non-finite value as null)") from None
        except ValueError:
            continue  # a line cut by a kill or a full disk
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
