"""An ablation folder shared by several processes, and machines: claims, per-run records, state merged on read.

Several ``eldarts ablate`` processes may work in one ablation folder at once:
the worker processes of ``--devices``, and ``--shard I/N`` invocations on N
machines sharing the folder. Three rules keep it consistent:

* **One writer per run folder.** A process runs a search only while it
  holds the run's claim, ``<run>/claim-<n>.json``, made with a hard link
  that fails if the name exists (atomic on local filesystems and on NFS, the
  classic NFS-safe lock). Claims are numbered and never reused (a released
  one is renamed ``released-<n>.json``); a claim whose processes are gone
  (same host, no such process) is taken over by creating
  ``claim-<n+1>.json``: of two processes that see the same stale or
  released claim, one wins. A claim from another
  host is never taken over automatically (its liveness cannot be known): the
  run is reported as running there, with the file to delete if that machine
  is gone.
* **What a runner knows about its run** (start, end, device, host, error)
  goes in ``<run>/ablation-run.json``, written by the claim holder only.
* **``ablation.json`` is a snapshot**, rewritten atomically by whichever
  process last changed something; it is never the truth about a run.
  Readers (Table 3, ``eldarts report``, ``--resume``) derive each run's
  status from its folder: ``summary.json`` (finished), ``checkpoint.pt``
  (partial), ``error.txt`` (failed), a live claim (running). Two processes
  writing snapshots at once can therefore leave a stale snapshot, never a
  wrong table.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.io import read_json, write_json
from ..core.errors import RunFolderError
from .files import AblationRun, AblationRunRecord, AblationState, EvalResults, RunStatus, check_summary, search_finished

CLAIM_PREFIX = "claim-"
RELEASED_PREFIX = "released-"


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (Linux ``/proc``), which tells a live process from a later one reusing its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _start_time(pid) in (None, started)


def _entries(folder: Path) -> list[tuple[int, Path]]:
    """Claim files (``claim-<n>.json``) and released ones (``released-<n>.json``), by number."""
    found = []
    for prefix in (CLAIM_PREFIX, RELEASED_PREFIX):
        for path in Path(folder).glob(f"{prefix}*.json"):
            number = path.stem[len(prefix):]
            if number.isdigit():
                found.append((int(number), path))
    return sorted(found)


def read_claim(folder: Path) -> Optional[dict]:
    """The live-or-stale claim of a run folder (its details and ``file``), or None when it is free."""
    entries = _entries(folder)
    if not entries or not entries[-1][1].name.startswith(CLAIM_PREFIX):
        return None
    path = entries[-1][1]
    try:
        info = read_json(path)
    except FileNotFoundError:
        return read_claim(folder)  # released or taken over while being read
    except (OSError, ValueError):
        info = {}  # not written by eldarts (a claim is linked whole): no process holds it
    return {**(info if isinstance(info, dict) else {}), "file": str(path)}


def claim_alive(info: dict) -> Optional[bool]:
    """True or False for a claim made on this host; None for another host's (it cannot be known here)."""
    if "host" not in info:
        return False
    if info["host"] != socket.gethostname():
        return None
    return any(_alive(int(pid), started) for pid, started in info.get("processes", []))


@dataclass
class Claim:
    """This process's claim on a run folder; ``release()`` when the run stops, however it stops."""

    path: Path
    info: dict

    def add_process(self, pid: int) -> None:
        """Record another process working for this claim (a worker): the claim lives while any of them does."""
        self.info["processes"].append([pid, _start_time(pid)])
        write_json(self.path, self.info)

    def release(self) -> None:
        # Renamed, not deleted: claim numbers are never reused, so a process that saw this claim and
        # tries to take it over cannot collide with one that claims the folder afresh.
        try:
            os.replace(self.path, self.path.with_name(RELEASED_PREFIX + self.path.name[len(CLAIM_PREFIX):]))
        except FileNotFoundError:
            pass


def claim_run(folder: Path, **details) -> tuple[Optional[Claim], Optional[dict]]:
    """Claim ``folder`` for this process: ``(claim, None)``, or ``(None, holder)`` when a live process (or
    another host) holds it. ``details`` (device, shard...) are recorded in the claim for people to read.

    Claims are numbered; the folder belongs to the highest number. A free folder (no claim, or the last
    one released) or a stale claim is taken with the next number, by a hard link that fails if another
    process took that number first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "processes": [[os.getpid(), _start_time(os.getpid())]],
            "since": now(), **details}
    # one temporary file per call (threads of one process claim too): linked, never renamed, so no partial claim
    tmp = folder / f".claim.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp"
    write_json(tmp, info)
    try:
        while True:
            entries = _entries(folder)
            holder = read_claim(folder)
            if holder is not None and claim_alive(holder) is not False:
                return None, holder
            number = entries[-1][0] + 1 if entries else 1
            path = folder / f"{CLAIM_PREFIX}{number}.json"
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue  # another process took this number first: look again
            for _, old in entries:  # the released or stale claims below ours
                old.unlink(missing_ok=True)
            return Claim(path, info), None
    finally:
        tmp.unlink(missing_ok=True)


def describe_holder(info: dict) -> str:
    pids = ", ".join(str(pid) for pid, _ in info.get("processes", []))
    where = f"host {info.get('host')}, pid {pids}"
    extra = "".join(f", {key} {info[key]}" for key in ("device", "shard") if info.get(key))
    return f"{where}{extra}, since {info.get('since')}"


# ---------------------------------------------------------------------------
# Status of a run, merged state of an ablation
# ---------------------------------------------------------------------------


def run_status(folder: Path, evaluate: bool = False) -> RunStatus:
    """``finished``, ``running`` (claimed by a live process, or by another host), ``failed`` (its last
    attempt raised: error.txt), ``partial`` (a checkpoint, e.g. after a kill) or ``pending``.
    All but ``finished`` and ``running`` are run again by ``--resume``."""
    folder = Path(folder)
    searched = search_finished(folder)
    if searched and (not evaluate or EvalResults.exists(folder / "eval")):
        return "finished"
    holder = read_claim(folder)
    if holder is not None and claim_alive(holder) is not False:
        return "running"
    if (folder / "error.txt").exists():
        return "failed"
    if searched or (folder / "checkpoint.pt").exists():
        return "partial"
    return "pending"


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def read_record(folder: Path) -> Optional[AblationRunRecord]:
    try:
        return AblationRunRecord.read(folder)
    except RunFolderError:
        return None


def refresh_run(out: Path, run: AblationRun, evaluate: bool) -> AblationRun:
    """``run`` with its status derived from its folder and its details from the folder's run record."""
    folder = Path(out) / run.id
    status = run_status(folder, evaluate)
    record = read_record(folder)
    update: dict = {"status": status}
    if record is not None:
        update.update(started=record.started, ended=record.ended, device=record.device, host=record.host,
                      shard=record.shard)
    update["error"] = last_line(folder / "error.txt") if status == "failed" else None
    return run.model_copy(update=update)


def read_ablation(out: Path) -> AblationState:
    """The ablation in ``out``, each run's status taken from its folder (not from the snapshot)."""
    state = AblationState.read(out)
    runs = [refresh_run(out, run, state.evaluated) for run in state.runs]
    return state.model_copy(update={"runs": runs, "finished": all(r.status == "finished" for r in runs)})


def _damaged_summary(folder: Path) -> Optional[str]:
    """What is wrong with ``folder``'s ``summary.json``, where it exists and cannot be read, else ``None``."""
    try:
        check_summary(folder)
    except RunFolderError as error:
        return str(error)
    return None


def missing_runs(out: Path, state: AblationState) -> list[str]:
    """One line per run of ``state`` that has not finished: what it is waiting for."""
    lines = []
    for run in state.runs:
        if run.status == "finished":
            continue
        folder = Path(out) / run.id
        if run.status == "running":
            holder = read_claim(folder) or {}
            note = f"running ({describe_holder(holder)})"
            if claim_alive(holder) is None:
                note += f"; if that machine is gone, delete {holder.get('file')}"
        elif run.status == "failed":
            note = f"failed: {run.error}"
        elif run.status == "partial" and (damaged := _damaged_summary(folder)) is not None:
            note = damaged  # finished, but its summary.json cannot be read (it read as "interrupted")
        elif run.status == "partial":
            note = "interrupted; its last checkpoint is kept"
        elif (record := read_record(folder)) is not None and record.outcome in ("interrupted", "running"):
            note = "interrupted before its first checkpoint"  # ("running": its process was killed)
        else:
            note = "not started"
        lines.append(f"{run.id}: {note}")
    return lines
