"""The ablation study of paper section 3.4 (Table 3) as one resumable command.

Each (row, seed) search runs in its own folder ``<out>/<row>-seed<k>/``
(rows and components: :mod:`eldarts_cli.config.ablate`); runs are scheduled
seed-major (every row with the first seed, then the second seed...) so an
interrupted ablation already has one result per row.

Runs go one after another in this process, or, with ``devices`` (two or
more), concurrently: one worker process per device, each running one search
at a time. ``shard=(i, n)`` runs only the i-th of n disjoint parts of the plan
(every n-th run), so n machines sharing the ablation folder split it. Every
run is claimed before it starts (``runs.ablation``): no two processes, here
or on another machine, ever run the same folder.

A run whose ``summary.json`` says finished is skipped on ``--resume``, a
half-written one resumes from its checkpoint, and a run that raises gets
``error.txt`` and does not stop the others. ``<out>/ablation.json`` is a
snapshot that this process (never a worker) rewrites; Table 3 is assembled
from the run folders themselves, from whatever has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence

import yaml

from ..config.ablate import AblationRecipe, SweepConfig, components, component_settings
from ..config.base import (
    check_recipe_kind, deep_merge, dotted_keys, load_recipe, mark_overrides, read_recipe_dict, recipe_differences,
    recipe_to_dict, recipe_yaml, validate_recipe,
)
from ..config.evaluate import EvalRecipe, EvalRuntimeConfig
from ..config.search import SearchRecipe
from ..core.errors import DataError, DivergenceError, EldartsError, RecipeError, RunFolderError, refused_here
from ..core.io import atomic_write_text, remove_stale_temporaries
from ..data.datasets import load_images
from ..data.loaders import check_data
from ..models.genotypes import load_genotype
from ..runs.ablation import Claim, claim_run, last_line, now, refresh_run, run_status
from ..runs.figures import write_ablation_report, write_eval_report, write_search_report
from ..runs.files import AblationRun, AblationRunRecord, AblationState, EvalResults, search_finished
from ..runs.folders import check_run_dir, holds_run, mark_run_dir, prepare_run_dir, run_kind
from .distributed import Distributed
from .evaluate import run_evaluation
from .search import Searcher, check_search_data

__all__ = ["plan_ablation", "run_ablation", "run_status", "select_shard", "parse_shard", "parse_devices"]

STATE_FILE = AblationState.FILE
RECIPE_FILE = "ablation.yaml"
#: A temporary file of an atomic write older than this (seconds) in an ablation folder was left by a killed process.
STALE_TEMPORARY_S = 600.0


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    id: str  # folder name: "<row>-seed<k>", or "<row>-target<v>-seed<k>" in a sweep
    row: str
    seed: int
    folder: Path
    recipe: SearchRecipe
    sweep_value: Optional[float] = None

    @property
    def components(self) -> dict[str, bool]:
        return components(self.row)


def refuse_torchrun() -> None:
    """An ablation is not launched with torchrun (each of its processes would run the whole plan): refused by the
    run and by its dry run, before anything is printed."""
    if Distributed.from_env().enabled:
        raise RecipeError(
            "eldarts ablate runs whole searches, one per process: spread it over devices with --devices "
            "cuda:0,cuda:1,... or over machines with --shard I/N, not with torchrun"
        )


def run_id(row: str, seed: int, sweep: Optional[SweepConfig] = None, value: Optional[float] = None) -> str:
    """``ABC-seed0``; in a sweep ``ABC-weight0.3-seed0``: the value as ``:g`` writes it, except where two of the
    sweep's values read alike so (0.1 and 0.1000001 shared one folder, one search reported for both): all their
    digits then. (Names of sweeps without such values are as an earlier eldarts made them: their --resume finds
    their runs.)"""
    if sweep is None or value is None:
        return f"{row}-seed{seed}"
    short = f"{value:g}"
    alike = sum(f"{other:g}" == short for other in sweep.values) > 1
    return f"{row}-{sweep.short}{repr(float(value)) if alike else short}-seed{seed}"


def plan_ablation(cfg: AblationRecipe, out: Path) -> list[PlannedRun]:
    """Every (row, seed[, sweep value]) search recipe, validated before anything runs (seed-major order)."""
    base, lines = read_recipe_dict(cfg.base)
    # (an evaluation or ablation recipe as the base: one unknown-key error per section, for every run)
    check_recipe_kind(base, SearchRecipe, str(cfg.base), lines, role="an ablation's base is a search recipe")
    # a value the ablation sets for every search (its overrides, or a --set of a search key) is named as such
    lines = mark_overrides(lines, dotted_keys(cfg.overrides), "{key} (the ablation's overrides or --set)")
    eval_recipe(cfg)  # a bad evaluation recipe stops the ablation before any search
    if cfg.sweep is not None and not isinstance(deep_merge(base, cfg.overrides).get("cost"), dict):
        raise RecipeError(f"sweep of {cfg.sweep.key} needs a cost: section in the base search recipe {cfg.base} "
                          "or in the ablation's overrides")
    runs = []
    for seed in cfg.seeds:
        for row in cfg.rows:
            for value in cfg.sweep.values if cfg.sweep is not None else [None]:
                ident = run_id(row, seed, cfg.sweep, value)
                data = deep_merge(base, cfg.overrides)
                data = deep_merge(data, component_settings(row, cfg.b_off))
                data = deep_merge(data, cfg.row_overrides.get(row, {}))
                if value is not None:
                    data = deep_merge(data, cfg.sweep.setting(value))
                data = deep_merge(data, {"seed": seed, "name": f"{cfg.name}-{ident}"})
                where = f"row {row}, seed {seed}" + (f", {cfg.sweep.label(value)}" if value is not None else "")
                try:
                    recipe = validate_recipe(data, SearchRecipe, str(cfg.base), lines)
                except RecipeError as error:
                    raise RecipeError(f"run {ident} ({where}; {cfg.base} with the ablation's overrides and --set "
                                      f"values): {error}") from None
                runs.append(PlannedRun(ident, row, seed, Path(out) / ident, recipe, value))
    return runs


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"2/4"`` -> ``(2, 4)``: the 2nd of 4 parts of the plan."""
    if text is None:
        return None
    parts = str(text).split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        i, n = (int(p) for p in parts)
        if 1 <= i <= n:
            return i, n
    raise RecipeError(f"--shard takes I/N, the I-th of N parts with 1 <= I <= N (e.g. 2/4); got '{text}'")


def select_shard(runs: Sequence[PlannedRun], shard: Optional[tuple[int, int]]) -> list[tuple[int, PlannedRun]]:
    """(plan index, run) of the runs in ``shard``: every N-th run of the seed-major plan, starting at the I-th,
    so that each part holds every row early. N shards together hold each run exactly once."""
    i, n = shard or (1, 1)
    return [(index, run) for index, run in enumerate(runs) if index % n == i - 1]


def parse_devices(text: Optional[str]) -> Optional[list[str]]:
    """``"cuda:0,cuda:1"`` -> ``["cuda:0", "cuda:1"]``, each checked to exist here (``cpu,cpu`` is allowed)."""
    if text is None:
        return None
    from ..core.device import resolve_device

    devices = [d.strip() for d in str(text).split(",")]
    if not any(devices):
        raise RecipeError(f"--devices takes a comma-separated list such as cuda:0,cuda:1 or cpu,cpu; got '{text}'")
    if not all(devices):  # cpu,,cpu: a worker fewer than written, or a typo
        raise RecipeError(f"--devices '{text}' has an empty entry; give one device per worker, such as cpu,cpu")
    for device in devices:
        resolve_device(device, option="--devices", instead="--devices " + ",".join(["cpu"] * len(devices)))
    return devices


def check_recipe_devices(runs: Sequence[PlannedRun], *, planning: bool = False) -> None:
    """Refuse the searches' ``runtime.device`` where this machine lacks it, and ``runtime.cuda_graphs`` off CUDA, as
    ``eldarts search`` does, before the first run (each run failed on it in turn); ``planning`` (``--dry-run``): warn
    instead, as a search's dry run."""
    from ..core.device import resolve_device
    from .graphs import check_graphs_device

    for name in sorted({run.recipe.runtime.device for run in runs}):
        with refused_here(planning):
            device = resolve_device(name, instead="--set runtime.device=cpu (or --devices cpu)")
            # runtime.cuda_graphs off CUDA: every search failed on it in turn (each with a traceback in error.txt)
            graphed = any(run.recipe.runtime.cuda_graphs for run in runs if run.recipe.runtime.device == name)
            check_graphs_device(graphed, device, "search")


def check_runs_data(runs: Sequence[PlannedRun]) -> None:
    """``--dry-run``: what the searches would fail on at their start (``engines.search.check_search_data``: missing
    data, a ``data.limit`` too small for a batch of each half; a cost section's evaluation recipe or cost table
    missing or unreadable), as one warning per problem naming the runs. Not refused: the ablation runs the
    others, and a failed run is retried on ``--resume``; a run refuses the cost files' problems
    (:func:`check_runs_cost`)."""
    import warnings

    for message, ids in _start_problems(runs, data=True).items():
        warnings.warn(f"{message}; {_which(ids, runs)} would fail here")


def check_runs_cost(runs: Sequence[PlannedRun]) -> None:
    """Refuse, before the first run, a cost section's evaluation recipe or cost table that is missing or unreadable
    (a relative path is read from the current folder): every search reading it failed on it in turn (exit 1, each
    with a traceback in ``error.txt``), and the printed resume command failed the same way."""
    problems = _start_problems([run for run in runs if not search_finished(run.folder)], data=False)
    if problems:
        message, ids = next(iter(problems.items()))
        raise RecipeError(f"{_which(ids, runs)} would fail on it: {message}")


def check_runs_start(runs: Sequence[PlannedRun]) -> None:
    """Refuse, before the first run, data that every search still to run would fail on (a missing ``data.root``, a
    tree without its ``train/``): each failed on it in turn, with an ``error.txt`` each, and the ablation ended
    "N of N runs failed" with a resume command that failed the same way. Data that only some runs lack is left to
    them (:func:`check_runs_data`)."""
    todo = [run for run in runs if not search_finished(run.folder)]
    failing: dict[str, list[str]] = {}
    first: dict[str, DataError] = {}
    for run in todo:
        try:
            check_data(run.recipe.data, splits=("train",))  # (a search reads no test split)
        except DataError as error:
            failing.setdefault(str(error), []).append(run.id)
            first.setdefault(str(error), error)
    if len(failing) == 1 and len(ids := next(iter(failing.values()))) == len(todo):
        cause = first[next(iter(failing))]
        error = DataError(f"{cause} ({_which(ids, runs)} would fail on it)")
        error.hint = cause.hint
        raise error


def _which(ids: list[str], runs: Sequence[PlannedRun]) -> str:
    return (f"every search ({len(ids)})" if len(ids) == len(runs) > 1 else
            f"{', '.join(ids)}: {'this search' if len(ids) == 1 else 'these searches'}")


def _start_problems(runs: Sequence[PlannedRun], data: bool) -> dict[str, list[str]]:
    """Each problem the searches would meet at their start, with the runs that would: the cost section's files, and
    with ``data`` the data (:func:`check_runs_data`)."""
    from .cost import load_evaluation_recipe, load_table

    read: dict[Path, Optional[EldartsError]] = {}  # each cost file once (the runs share them)

    def check_file(path: Path, load) -> None:
        if path not in read:
            try:
                load(path)
                read[path] = None
            except EldartsError as error:
                read[path] = error
        if read[path] is not None:
            raise read[path]

    failing: dict[str, list[str]] = {}
    for run in runs:
        try:
            if data:
                check_search_data(run.recipe, planning=False)
            cost = run.recipe.cost
            if cost is not None:  # what a search's dry run reads of its cost section (engines.cost)
                check_file(cost.network, load_evaluation_recipe)
                if cost.table is not None:
                    check_file(cost.table, load_table)
        except EldartsError as error:
            failing.setdefault(str(error), []).append(run.id)
    return failing


#: What may differ between an ablation's existing runs and its recipe now: only how they run, and where the data is
#: (a relative data.root is read from the current folder). Unlike a single search, not the learning rates: one table
#: must not mix runs trained with different ones.
ABLATION_RESUMABLE = ("runtime.", "data.root", "data.download")


def check_existing(runs: Sequence[PlannedRun], evaluation: Optional[EvalRecipe] = None) -> None:
    """Refuse to mix runs made with another recipe into the table (only ``runtime`` may differ): each run's search
    recipe, and its evaluation's (``<run>/eval/recipe.yaml``) against ``evaluation``, the ablation's evaluation
    recipe now (``None``: no evaluate section, and a run evaluated before would mix a test error into a row of
    validation errors). A shard or a resume with other evaluation settings was taken, and its rows mixed."""
    problems = []
    for run in runs:
        for path, now in ((run.folder / "recipe.yaml", run.recipe), (run.folder / "eval" / "recipe.yaml", evaluation)):
            if not path.exists():
                continue
            which = run.id if path.parent == run.folder else f"{run.id} (its evaluation)"
            if now is None:
                problems.append(f"{which}: evaluated, and the ablation now has no evaluate section")
                continue
            try:  # with the defaults of fields added since (an earlier eldarts' file lacks them: "None -> 'cosine'")
                old = recipe_to_dict(load_recipe(path, type(now)))
            except EldartsError:  # one this version no longer validates: compared as written
                try:
                    old = yaml.safe_load(path.read_text())
                except (yaml.YAMLError, OSError, ValueError):
                    problems.append(f"{which}: {path.name} is not valid YAML")
                    continue
            diffs = recipe_differences(old or {}, recipe_to_dict(now), ABLATION_RESUMABLE)
            if diffs:
                problems.append(f"{which}: " + "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else ""))
    if problems:
        raise RecipeError(
            "existing runs were made with a different recipe than the ablation now gives ("
            + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more run(s)" if len(problems) > 3 else "")
            + "): use the recipe and --set values the ablation was started with, or another --out"
        )


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


class AblationCallbacks(Protocol):
    def run_start(self, run: PlannedRun, index: int, total: int, resuming: bool) -> None: ...
    def run_skipped(self, run: PlannedRun, index: int, total: int) -> None: ...
    def run_elsewhere(self, run: PlannedRun, index: int, total: int, holder: dict) -> None: ...
    def run_end(self, run: PlannedRun, record: AblationRun) -> None: ...
    def search_callbacks(self, run: PlannedRun) -> Any: ...


class QuietAblation:
    """Callbacks that report nothing (library use, tests)."""

    def run_start(self, run, index, total, resuming):
        pass

    def run_skipped(self, run, index, total):
        pass

    def run_elsewhere(self, run, index, total, holder):
        pass

    def run_end(self, run, record):
        pass

    def search_callbacks(self, run):
        return None


_now = now


def load_state(out: Path) -> AblationState:
    if not AblationState.exists(out):
        raise RunFolderError(f"{out} holds no ablation ({STATE_FILE} is missing)")
    return AblationState.read(out)


def prepare_ablation_dir(out: Path, runs: Sequence[PlannedRun], resume: bool, join: bool = False) -> None:
    """The run-folder rules of ``runs.folders`` for the ablation's folder (its runs live inside it);
    ``join`` (a shard) may start the ablation or join a sibling shard's, if both plan the same runs."""
    out = Path(out)
    if join and resume and run_kind(out) != "ablation":  # (a mistyped --resume of a shard started a new ablation)
        check_run_dir(out, resume=True, kind="ablation")
    if join:
        if run_kind(out) != "ablation":
            try:
                check_run_dir(out, resume=False, kind="ablation")
                prepare_run_dir(out, resume=False, kind="ablation")
            except RunFolderError:
                if run_kind(out) != "ablation":  # not a sibling shard that made it meanwhile
                    raise
        _check_same_plan(out, runs)
        mark_run_dir(out, "ablation")  # an ablation from before run markers
        remove_stale_temporaries(out, older_than=STALE_TEMPORARY_S)
        return
    check_ablation_dir(out, runs, resume)
    if resume:
        mark_run_dir(out, "ablation")  # an ablation from before run markers
        remove_stale_temporaries(out, older_than=STALE_TEMPORARY_S)  # (a sibling shard may be writing now)
        return
    prepare_run_dir(out, resume=False, kind="ablation")


def check_ablation_dir(out: Path, runs: Sequence[PlannedRun], resume: bool, join: bool = False) -> None:
    """What :func:`prepare_ablation_dir` refuses, touching nothing (``--dry-run``)."""
    out = Path(out)
    if join and resume and run_kind(out) != "ablation":
        check_run_dir(out, resume=True, kind="ablation")
    if join:
        if run_kind(out) != "ablation":
            check_run_dir(out, resume=False, kind="ablation")
        _check_same_plan(out, runs)
        return
    if resume:
        kind = run_kind(out)
        if not AblationState.exists(out) and kind != "ablation":  # marked but never saved: starts over
            if kind is not None or not out.is_dir():
                check_run_dir(out, resume=True, kind="ablation")  # names what the folder holds, or its absence
            raise RunFolderError(f"cannot resume: {out} holds no eldarts ablation ({STATE_FILE} is missing); give "
                                 f"an ablation's folder, or start one with another --out")
        _check_same_plan(out, runs, resume=True)
        return
    if AblationState.exists(out):
        raise RunFolderError(f"{out} already holds an ablation; continue it with this command's recipe and --set, and "
                             f"--resume {shlex.quote(str(out))} in place of --out, or choose another --out")
    if holds_run(out) or run_kind(out) not in (None, "ablation"):
        raise RunFolderError(f"{out} holds a single run, not an ablation; choose another --out")
    check_run_dir(out, resume=False, kind="ablation")


def _check_same_plan(out: Path, runs: Sequence[PlannedRun], resume: bool = False) -> None:
    """Refuse a plan other than the one ``out`` holds: a shard joins, and ``--resume`` continues, the same runs (a
    resumed ablation of other rows or seeds rewrote the tables without the runs it had finished)."""
    if AblationState.exists(out):
        planned, theirs = [r.id for r in runs], [r.id for r in AblationState.read(out).runs]
        if (sorted(planned) != sorted(theirs)) if resume else (planned != theirs):  # a shard also needs the order
            rule = ("--resume continues the same plan: give the recipe, rows and seeds it was started with, or start "
                    "another ablation with another --out" if resume else
                    "Shards must share one plan: give every shard the same recipe, rows and seeds")
            raise RecipeError(f"{out} holds an ablation of runs {', '.join(theirs)}; this command plans "
                              f"{', '.join(planned)}. {rule}")


def run_ablation(
    cfg: AblationRecipe,
    out: Path,
    *,
    resume: bool = False,
    recipe_path: Optional[Path] = None,
    callbacks: Optional[AblationCallbacks] = None,
    devices: Optional[Sequence[str]] = None,
    shard: Optional[tuple[int, int]] = None,
) -> AblationState:
    """Run (or continue) the searches of the ablation (of ``shard`` only, if given); returns the state of
    the whole ablation as its folders show it, and writes ``ablation.json`` and Table 3 from it.

    ``devices``: two or more run concurrently, one worker process per device. A run that raises is
    recorded as failed (``<run>/error.txt`` holds its error) and the next one starts; a run claimed by
    another process is left to it; ``KeyboardInterrupt`` stops the ablation after saving the state, and
    ``--resume`` picks up where it was.
    """
    refuse_torchrun()
    out = Path(out)
    callbacks = callbacks or QuietAblation()
    runs = plan_ablation(cfg, out)
    mine = select_shard(runs, shard)
    if not devices:  # --devices were checked when parsed; else the recipe's device, before any folder or run
        check_recipe_devices([run for _, run in mine])
    prepare_ablation_dir(out, runs, resume, join=shard is not None)
    check_existing(runs, eval_recipe(cfg))
    atomic_write_text(out / RECIPE_FILE, recipe_yaml(cfg))
    started = AblationState.read(out).started if AblationState.exists(out) else _now()
    book = _Book(cfg, out, runs, recipe_path, started, shard)
    book.snapshot()
    todo = []
    for index, run in mine:
        if run_status(run.folder, book.evaluate) == "finished":
            callbacks.run_skipped(run, index, len(runs))
        else:
            todo.append((index, run))
    if devices is not None and len(devices) > 1:
        _run_on_workers(todo, book, callbacks, list(devices))
    else:
        _run_here(todo, book, callbacks, devices[0] if devices else None)
    state = book.snapshot()
    # the figures of runs that finished without them too (a process stopped while drawing them)
    write_ablation_report(out, run_figures=cfg.figures, chart=cfg.figures)
    return state


class _Book:
    """The bookkeeping of one ``eldarts ablate`` process: claims, run records, ``ablation.json`` snapshots."""

    def __init__(self, cfg, out: Path, runs: Sequence[PlannedRun], recipe_path, started: str, shard):
        self.cfg, self.out, self.runs, self.started = cfg, out, runs, started
        self.recipe_path = str(recipe_path) if recipe_path else None
        self.evaluate = cfg.evaluate is not None
        self.shard = f"{shard[0]}/{shard[1]}" if shard else None

    def snapshot(self) -> AblationState:
        """Write ``ablation.json`` from the run folders as they are now."""
        records = [self.record_of(r) for r in self.runs]
        cfg = self.cfg
        state = AblationState(
            name=cfg.name, recipe=self.recipe_path, b_off=cfg.b_off, evaluated=self.evaluate, rows=cfg.rows,
            seeds=cfg.seeds, started=self.started, updated=_now(), runs=records,
            sweep=cfg.sweep.key if cfg.sweep is not None else None,
            finished=all(r.status == "finished" for r in records),
        )
        state.write(self.out)
        return state

    def claim(self, run: PlannedRun, index: int, callbacks, device: Optional[str]) -> Optional[Claim]:
        """This process's claim on ``run``, or None (finished meanwhile, or another process holds it). Before each
        run the others' recipes are compared again: two shards started at once with other recipes each saw no run
        of the other at its start, and mixed their runs into one table."""
        check_existing(self.runs, eval_recipe(self.cfg))
        claim, holder = claim_run(run.folder, device=device, shard=self.shard)
        if claim is None:
            callbacks.run_elsewhere(run, index, len(self.runs), holder)
            return None
        if run_status(run.folder, self.evaluate) == "finished":  # finished by another process meanwhile
            claim.release()
            callbacks.run_skipped(run, index, len(self.runs))
            return None
        return claim

    def record(self, run: PlannedRun, outcome: str, **fields) -> None:
        """Update the run's record (by this process, the claim holder)."""
        previous = None
        try:
            previous = AblationRunRecord.read(run.folder)
        except RunFolderError:
            pass
        data = previous.model_dump() if previous is not None and outcome != "running" else {}
        data.update(id=run.id, outcome=outcome, shard=self.shard, host=socket.gethostname(), pid=os.getpid(), **fields)
        AblationRunRecord(**data).write(run.folder)

    def record_of(self, run: PlannedRun) -> AblationRun:
        """The run as its folder shows it now."""
        return refresh_run(self.out, AblationRun(id=run.id, row=run.row, seed=run.seed, **run.components,
                                                 status="pending", sweep_value=run.sweep_value), self.evaluate)


def _start_run(book: _Book, run: PlannedRun, index: int, callbacks, device: Optional[str],
               worker_pid: Optional[int] = None) -> None:
    resuming = (run.folder / "checkpoint.pt").exists() or search_finished(run.folder)
    (run.folder / "error.txt").unlink(missing_ok=True)  # an earlier attempt's; this one writes its own
    book.record(run, "running", started=_now(), device=device, worker_pid=worker_pid)
    callbacks.run_start(run, index, len(book.runs), resuming)
    book.snapshot()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Inside, Ctrl-C (and SIGTERM or SIGHUP, where a handler raises it, as the CLI's does) waits until the block
    ends, then stops the process as it would have: a run's record, claim and snapshot change together, so an
    interrupt at the end of a run cannot leave it recorded as running. In the main thread only (where signals
    arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
    handlers = {sig: handler for sig in stops if callable(handler := signal.getsignal(sig))}
    pending: list[tuple[int, Any]] = []
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if pending:
            signum, frame = pending[0]
            handlers[signum](signum, frame)  # raises KeyboardInterrupt (or the CLI's Terminated)


def _end_run(book: _Book, run: PlannedRun, claim: Claim, callbacks, outcome: str,
             error: Optional[str]) -> AblationRun:
    """Record how a run ended (``finished``, ``failed``, or ``interrupted``: killed, or stopped by Ctrl-C),
    release its claim, and report it. A run stopped after its results were saved (its figures being drawn, or
    its process ending) finished."""
    with _interrupts_deferred():
        if outcome == "interrupted" and run_status(run.folder, book.evaluate) == "finished":
            outcome, error = "finished", None
        book.record(run, outcome, ended=_now(), error=error)
        claim.release()
        record = book.record_of(run)
        if error:
            record = record.model_copy(update={"error": error})
        book.snapshot()
        if outcome != "interrupted" or error:
            callbacks.run_end(run, record)
    return record


def _run_here(todo, book: _Book, callbacks, device: Optional[str]) -> None:
    """One run after another in this process (on ``device``, if given)."""
    dataset_cache: dict[str, Any] = {}
    for index, run in todo:
        claim = book.claim(run, index, callbacks, device)
        if claim is None:
            continue
        outcome, error = "interrupted", None  # until the run ends otherwise: Ctrl-C may come at any point
        try:
            if device is not None:
                run = _on_device(run, device, None)
            _start_run(book, run, index, callbacks, device)
            try:
                _run_one(run, book.cfg, dataset_cache, callbacks.search_callbacks(run), device=device)
            except Exception as failure:  # one failed run must not stop the others
                _write_error(run, failure)
                outcome, error = "failed", _error_line(failure)
            else:
                (run.folder / "error.txt").unlink(missing_ok=True)
                outcome = "finished"
        finally:
            try:
                _end_run(book, run, claim, callbacks, outcome, error)
            finally:
                claim.release()


def _on_device(run: PlannedRun, device: str, threads: Optional[int]) -> PlannedRun:
    """``run`` with ``runtime.device`` (and, if given, ``runtime.threads``) set: only ``runtime`` changes."""
    runtime = {"device": device, **({"threads": threads} if threads else {})}
    recipe = run.recipe.model_copy(update={"runtime": run.recipe.runtime.model_copy(update=runtime)})
    return dataclasses.replace(run, recipe=recipe)


# ---------------------------------------------------------------------------
# Worker processes (--devices)
# ---------------------------------------------------------------------------


def _run_on_workers(todo, book: _Book, callbacks, devices: list[str]) -> None:
    """Concurrent runs: one worker process per device, each running one search at a time; this process
    claims the runs, hands them out, records and reports them.

    Workers are spawned (CUDA and OpenMP state are not forked) and each talks to this process through its
    own pipes, never a shared queue, whose lock a killed worker could take with it. A worker that dies
    (killed, out of memory) takes only its current run: that run keeps its last checkpoint for
    ``--resume``, and a new worker takes the device's next run.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    cpu_workers = sum(d.startswith("cpu") for d in devices)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # CPU workers share the cores (a recipe's runtime.threads wins): not every worker on every core
    threads = max(1, cores // cpu_workers) if cpu_workers else None
    waiting = list(todo)
    workers = [_Worker(ctx, device) for device in devices]

    def assign() -> None:
        for worker in workers:
            while worker.job is None and waiting:
                index, run = waiting.pop(0)
                claim = book.claim(run, index, callbacks, worker.device)
                if claim is None:
                    continue
                if not worker.alive():
                    worker.start()
                cpu_threads = threads if worker.device.startswith("cpu") and not run.recipe.runtime.threads else None
                placed = _on_device(run, worker.device, cpu_threads)
                claim.add_process(worker.pid)
                _start_run(book, placed, index, callbacks, worker.device, worker_pid=worker.pid)
                worker.job = {"claim": claim, "run": placed, "progress": callbacks.search_callbacks(run)}
                worker.send((placed, book.cfg))

    def listen(timeout: float) -> None:
        """Take in what the workers said: progress, and each run's outcome."""
        ready = wait([w.events for w in workers if w.events is not None], timeout)
        for worker in workers:
            if worker.events in ready:
                worker.receive()

    def settle(worker: "_Worker", default: tuple[str, Optional[str]]) -> None:
        job, worker.job = worker.job, None
        outcome, error = worker.outcome or default
        worker.outcome = None
        try:
            _end_run(book, job["run"], job["claim"], callbacks, outcome, error)
        finally:
            job["claim"].release()

    def reap() -> None:
        for worker in workers:
            if worker.job is None:
                continue
            if worker.outcome is not None:
                settle(worker, ("interrupted", None))
            elif not worker.alive():
                worker.receive_all()  # its last words, if it had time to say them
                settle(worker, ("interrupted", f"the worker process on {worker.device} died "
                                               f"(exit code {worker.proc.exitcode})"))

    try:
        assign()
        while any(w.job is not None for w in workers):
            listen(0.5)
            reap()
            assign()
        for worker in workers:
            worker.stop()
    except (KeyboardInterrupt, EldartsError):
        # The terminal's Ctrl-C reaches the workers too; a signal sent to this process alone is passed on. A refusal
        # met between runs (another shard's runs of another recipe, before a claim) stops the busy runs likewise:
        # recorded as interrupted, for --resume (the workers ended themselves once this process had gone).
        busy = [w for w in workers if w.job is not None]
        for worker in busy:
            worker.interrupt()
        deadline = time.monotonic() + 60
        while any(w.outcome is None and w.alive() for w in busy) and time.monotonic() < deadline:
            listen(0.2)
        for worker in busy:
            worker.receive_all()
            settle(worker, ("interrupted", None))
        for worker in workers:
            worker.stop(timeout=5)
        raise


class _Worker:
    """A worker process bound to one device, fed one run at a time (started again if it dies)."""

    def __init__(self, ctx, device: str):
        self.ctx, self.device = ctx, device
        self.proc = self.tasks = self.events = None
        self.job: Optional[dict] = None
        self.outcome: Optional[tuple[str, Optional[str]]] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        task_out, self.tasks = self.ctx.Pipe(duplex=False)
        self.events, event_in = self.ctx.Pipe(duplex=False)
        self.proc = self.ctx.Process(target=_worker_main, args=(self.device, task_out, event_in, os.getpid()),
                                     name=f"eldarts-ablate-{self.device}")
        self.proc.start()
        task_out.close()  # the worker's ends: closed here, so that its death reads as the end of its pipe
        event_in.close()

    def send(self, task) -> None:
        self.tasks.send(task)

    def receive(self) -> None:
        """One message from the worker (progress, or a run's outcome); the end of the pipe if it is gone."""
        try:
            kind, run_id, *args = self.events.recv()
        except (EOFError, OSError):
            self.events = None
            return
        if kind == "done":
            self.outcome = (args[0], args[1])
        elif self.job is not None and self.job["run"].id == run_id and self.job["progress"] is not None:
            getattr(self.job["progress"], kind)(*args)

    def receive_all(self) -> None:
        while self.events is not None and self.events.poll():
            self.receive()

    def interrupt(self) -> None:
        if self.alive():
            self.proc.join(timeout=1)
        if self.alive():
            os.kill(self.proc.pid, 2)  # SIGINT: the search stops at once, its last checkpoint kept

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.alive():
            try:
                self.tasks.send(None)
            except OSError:
                pass
            self.proc.join(timeout)
        if self.alive():
            self.proc.terminate()
        self.proc.join()


class _PipeCallbacks:
    """Search progress of a worker, sent to the process that reports it."""

    def __init__(self, events, run_id: str):
        self.events, self.run_id = events, run_id

    def epoch_start(self, epoch, epochs, steps):
        self.events.send(("epoch_start", self.run_id, epoch, epochs, steps))

    def step(self, step):
        self.events.send(("step", self.run_id, step))

    def epoch_end(self, row):
        self.events.send(("epoch_end", self.run_id, row))


def _watch_parent(parent: int) -> None:
    """A worker ends itself when the process that claimed its runs is gone (their claims would look stale)."""
    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="eldarts-parent-watch").start()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A worker's warnings as the command's own are said, one ``warning:`` line each (a worker printed Python's
    two-line format, with the source line)."""
    try:
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _worker_main(device: str, tasks, events, parent: int) -> None:
    """Run the searches (and evaluations) handed over on ``tasks`` until ``None``; each outcome goes back
    on ``events`` as a ``done`` message."""
    _watch_parent(parent)
    warnings.showwarning = _one_line_warning
    dataset_cache: dict[str, Any] = {}
    try:
        while True:
            try:
                task = tasks.recv()
            except EOFError:
                break
            if task is None:
                break
            run, cfg = task
            try:
                _run_one(run, cfg, dataset_cache, _PipeCallbacks(events, run.id), device=device)
            except KeyboardInterrupt:
                events.send(("done", run.id, "interrupted", None))
                break
            except (BrokenPipeError, ConnectionResetError):  # the main process is gone: the run was stopped, not
                break  # failed (it was recorded as failed, "BrokenPipeError"); --resume continues it
            except Exception as error:  # noqa: BLE001 - recorded as this run's failure
                _write_error(run, error)
                events.send(("done", run.id, "failed", _error_line(error)))
            else:
                (run.folder / "error.txt").unlink(missing_ok=True)
                events.send(("done", run.id, "finished", None))
    except (KeyboardInterrupt, BrokenPipeError):
        pass


def _write_error(run: PlannedRun, error: BaseException) -> None:
    """``<run>/error.txt``: the run's error, as its one line, or the traceback of an unexpected failure
    (``--resume`` runs it again)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    mark_run_dir(run.folder, "search")  # the ablation made it: --resume may write into it
    # an eldarts error is its one line, as the command line gives it (a traceback ended in the module's path of
    # its class, which the failed run's status line then showed); anything else, its traceback
    text = f"{error}\n" if isinstance(error, EldartsError) else "".join(traceback.format_exception(error))
    if isinstance(error, DivergenceError):  # its advice (--set optim.lr=...) does not apply to one run of a table
        text += (f"\n{DIVERGED_NOTE}: every run shares one recipe, so --resume cannot change optim.lr for one run: "
                 "set the advised values in the ablation recipe's overrides (e.g. overrides: {optim: {lr: ...}}) "
                 "and start a new ablation folder.\n")
    atomic_write_text(run.folder / "error.txt", text)


#: The start of the line :func:`_write_error` adds to a diverged run's error.txt (:func:`run_diverged` reads it).
DIVERGED_NOTE = "This run diverged"


def run_diverged(folder: Path) -> bool:
    """Whether the run in ``folder`` failed by diverging (its error.txt says so): a resume would diverge again."""
    return last_line(Path(folder) / "error.txt").startswith(DIVERGED_NOTE)


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    if isinstance(error, DivergenceError):  # its "resume with --set optim.lr=..." does not apply to one run of a table
        line = line.split(". Nothing of that epoch")[0] + (
            f". {DIVERGED_RETRY}" + (f" (e.g. {', '.join(error.changes)})" if error.changes else ""))
    # an eldarts error is its message, as error.txt holds it; anything else, with its type (as a traceback ends)
    return line if isinstance(error, EldartsError) else f"{type(error).__name__}: {line}".strip()


#: What a diverged run of an ablation needs: every run shares one recipe, which --resume may not change.
DIVERGED_RETRY = ("an ablation's --resume runs it with the same recipe again: lower the learning rate in the ablation "
                  "recipe's overrides (or row_overrides) and start a new ablation folder")


_last_line = last_line


def _run_one(run: PlannedRun, cfg: AblationRecipe, dataset_cache: dict, search_callbacks: Any,
             device: Optional[str] = None) -> None:
    """Search (or finish a half-written search), write its figures, then evaluate if asked (on ``device``)."""
    recipe = run.recipe
    if not search_finished(run.folder):
        # a run the ablation started before (even one that never reached its first checkpoint, or one
        # from before run markers that left only error.txt) is continued: the folder is the ablation's own
        if run.folder.is_dir():
            mark_run_dir(run.folder, "search")
        resume = run_kind(run.folder) == "search"
        prepare_run_dir(run.folder, resume=resume, kind="search")
        key = recipe.data.model_dump_json()
        if key not in dataset_cache:
            dataset_cache.clear()  # keep one dataset in memory
            dataset_cache[key] = load_images(recipe.data, "train")
        searcher = Searcher(recipe, run.folder, resume=resume, callbacks=search_callbacks,
                            dataset=dataset_cache[key])
        searcher.run()
        if cfg.figures:
            write_search_report(run.folder)
    if cfg.evaluate is not None and not EvalResults.exists(run.folder / "eval"):
        recipe = eval_recipe(cfg)
        if device is not None:
            recipe = recipe.model_copy(update={"runtime": recipe.runtime.model_copy(update={"device": device})})
        evaluate_genotype(run.folder, recipe, run.id)


def eval_recipe(cfg: AblationRecipe) -> Optional[EvalRecipe]:
    """The evaluation recipe of the ablation (validated), or None.

    The searches' ``runtime`` overrides (``--set runtime.threads=1``) apply to it
    too, underneath the stage's own overrides.
    """
    if cfg.evaluate is None:
        return None
    # (the settings an evaluation's runtime has: runtime.recompute, a search's, was refused as an unknown key)
    runtime = {key: value for key, value in (cfg.overrides.get("runtime") or {}).items()
               if key in EvalRuntimeConfig.model_fields}
    settings = deep_merge({"runtime": runtime}, cfg.evaluate.overrides)
    try:
        return load_recipe(cfg.evaluate.recipe, EvalRecipe, _flatten(settings), label="the ablation's override {key}",
                           role="an ablation's evaluate.recipe is an evaluation recipe")
    except RecipeError as error:
        raise RecipeError(f"evaluation recipe of the ablation: {error}") from None


def priced_network_warning(runs: Sequence[PlannedRun], evaluation: Optional[EvalRecipe]) -> Optional[str]:
    """Where the searches' ``cost.network`` prices another network than the ablation's evaluation trains: Table 3's
    cost column (and the accuracy-cost chart) would set one network's cost beside another's test error."""
    from .cost import load_evaluation_recipe

    if evaluation is None:
        return None
    for path in sorted({str(run.recipe.cost.network) for run in runs if run.recipe.cost is not None}):
        try:
            priced = load_evaluation_recipe(Path(path))
        except EldartsError:
            continue  # (refused, or warned of, on its own)
        def network(r: EvalRecipe) -> str:
            return f"the {r.network.kind} network C={r.network.channels}, {r.network.layers} cells, on {r.data.dataset}"

        if network(priced) != network(evaluation):
            return (f"cost.network {path} prices {network(priced)}, but the ablation's evaluation trains "
                    f"{network(evaluation)}: Table 3's cost column is the priced network's, beside the trained "
                    "one's error")
    return None


def evaluate_genotype(search_dir: Path, recipe: EvalRecipe, run_name: str) -> dict:
    """Train the searched genotype from scratch with ``eldarts evaluate`` into ``<search_dir>/eval``."""
    genotype = load_genotype(search_dir).model_copy(update={"name": run_name})
    eval_dir = Path(search_dir) / "eval"
    # an evaluation started before (even one stopped before its first checkpoint) is continued
    results = run_evaluation(recipe, genotype, eval_dir, resume=run_kind(eval_dir) == "evaluation")
    try:
        write_eval_report(eval_dir)
    except RunFolderError:
        pass
    return results


def _flatten(settings: dict, prefix: str = "") -> list[str]:
    """Nested mapping -> ``key=value`` strings (values as YAML flow scalars)."""
    items = []
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            items += _flatten(value, path + ".")
        else:
            items.append(f"{path}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    return items
