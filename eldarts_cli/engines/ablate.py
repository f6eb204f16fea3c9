"""The ablation study of paper section 3.4 (Table 3) as one resumable command.

Each (row, seed) search runs in its own folder ``<out>/<row>-seed<k>/``
(rows and components: :mod:`eldarts_cli.config.ablate`); runs are scheduled
seed-major (every row with the first seed, then the second seed...) so an
interrupted ablation already has one result per row. Runs are sequential in
one process; to spread an ablation over several GPUs, start one ``eldarts
ablate`` per GPU on disjoint ``rows`` or ``seeds`` with ``--set
runtime.device=cuda:N``.

State lives in ``<out>/ablation.json``; a run whose ``summary.json`` says
finished is skipped on ``--resume``, a half-written one resumes from its
checkpoint, and a run that raises gets ``error.txt`` and does not stop the
others.
"""

from __future__ import annotations

import datetime as _dt
import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import yaml

from ..config.ablate import AblationRecipe, SweepConfig, components, component_settings
from ..config.base import deep_merge, load_recipe, read_recipe_dict, recipe_differences, recipe_to_dict, validate_recipe
from ..config.evaluate import EvalRecipe
from ..config.search import SearchRecipe
from ..core.errors import RecipeError, RunFolderError
from ..core.io import atomic_write_text
from ..data.datasets import load_images
from ..models.genotypes import load_genotype
from ..runs.figures import write_ablation_report, write_eval_report, write_search_report
from ..runs.files import AblationRun, AblationState, EvalResults, RunStatus, search_finished
from ..runs.folders import check_run_dir, holds_run, mark_run_dir, prepare_run_dir, run_kind
from .evaluate import run_evaluation
from .search import Searcher

STATE_FILE = AblationState.FILE
RECIPE_FILE = "ablation.yaml"


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


def run_id(row: str, seed: int, sweep: Optional[SweepConfig] = None, value: Optional[float] = None) -> str:
    middle = f"-{sweep.short}{value:g}" if sweep is not None and value is not None else ""
    return f"{row}{middle}-seed{seed}"


def plan_ablation(cfg: AblationRecipe, out: Path) -> list[PlannedRun]:
    """Every (row, seed[, sweep value]) search recipe, validated before anything runs (seed-major order)."""
    base, lines = read_recipe_dict(cfg.base)
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
                    raise RecipeError(f"run {ident} ({where}):\n{error}") from None
                runs.append(PlannedRun(ident, row, seed, Path(out) / ident, recipe, value))
    return runs


def run_status(folder: Path, evaluate: bool = False) -> RunStatus:
    """``finished``, ``partial`` (has a checkpoint), ``failed`` (error.txt, no checkpoint) or ``pending``."""
    searched = search_finished(folder)
    if searched and (not evaluate or EvalResults.exists(folder / "eval")):
        return "finished"
    if searched or (folder / "checkpoint.pt").exists():
        return "partial"
    if (folder / "error.txt").exists():
        return "failed"
    return "pending"


#: What may differ between an ablation's existing runs and its recipe now: only how they run. Unlike a
#: single search, not the learning rates: one table must not mix runs trained with different ones.
ABLATION_RESUMABLE = ("runtime.",)


def check_existing(runs: Sequence[PlannedRun]) -> None:
    """Refuse to mix runs made with another recipe into the table (only ``runtime`` may differ)."""
    problems = []
    for run in runs:
        path = run.folder / "recipe.yaml"
        if not path.exists():
            continue
        try:
            old = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, OSError, ValueError):
            problems.append(f"{run.id}: recipe.yaml is not valid YAML")
            continue
        diffs = recipe_differences(old or {}, recipe_to_dict(run.recipe), ABLATION_RESUMABLE)
        if diffs:
            problems.append(f"{run.id}: " + "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else ""))
    if problems:
        raise RecipeError(
            "existing runs were made with a different recipe than the ablation now gives:\n  "
            + "\n  ".join(problems)
            + "\n(use the recipe and --set values the ablation was started with, or another --out)"
        )


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


class AblationCallbacks(Protocol):
    def run_start(self, run: PlannedRun, index: int, total: int, resuming: bool) -> None: ...
    def run_skipped(self, run: PlannedRun, index: int, total: int) -> None: ...
    def run_end(self, run: PlannedRun, record: AblationRun) -> None: ...
    def search_callbacks(self, run: PlannedRun) -> Any: ...


class QuietAblation:
    """Callbacks that report nothing (library use, tests)."""

    def run_start(self, run, index, total, resuming):
        pass

    def run_skipped(self, run, index, total):
        pass

    def run_end(self, run, record):
        pass

    def search_callbacks(self, run):
        return None


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def load_state(out: Path) -> AblationState:
    if not AblationState.exists(out):
        raise RunFolderError(f"{out} holds no ablation ({STATE_FILE} is missing)")
    return AblationState.read(out)


def prepare_ablation_dir(out: Path, runs: Sequence[PlannedRun], resume: bool) -> None:
    """The run-folder rules of ``runs.folders`` for the ablation's folder (its runs live inside it)."""
    out = Path(out)
    if resume:
        if not AblationState.exists(out) and run_kind(out) != "ablation":  # marked but never saved: starts over
            raise RunFolderError(f"cannot resume: {out} holds no ablation ({STATE_FILE} is missing); "
                                 f"start it without --resume")
        mark_run_dir(out, "ablation")  # an ablation from before run markers
        return
    if AblationState.exists(out):
        raise RunFolderError(f"{out} already holds an ablation; continue it with --resume {out}, or choose another --out")
    if holds_run(out) or run_kind(out) not in (None, "ablation"):
        raise RunFolderError(f"{out} holds a single run, not an ablation; choose another --out")
    check_run_dir(out, resume=False, kind="ablation")
    prepare_run_dir(out, resume=False, kind="ablation")


def run_ablation(
    cfg: AblationRecipe,
    out: Path,
    *,
    resume: bool = False,
    recipe_path: Optional[Path] = None,
    callbacks: Optional[AblationCallbacks] = None,
) -> AblationState:
    """Run (or continue) every search of the ablation; returns the state written to ``ablation.json``.

    A run that raises is recorded as failed (``<run>/error.txt`` holds the
    traceback) and the next one starts; ``KeyboardInterrupt`` stops the
    ablation after saving the state, and ``--resume`` picks up where it was.
    """
    out = Path(out)
    callbacks = callbacks or QuietAblation()
    runs = plan_ablation(cfg, out)
    prepare_ablation_dir(out, runs, resume)
    check_existing(runs)
    atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(recipe_to_dict(cfg), sort_keys=False))
    evaluate = cfg.evaluate is not None
    records = []
    for run in runs:
        status = run_status(run.folder, evaluate)
        error = _last_line(run.folder / "error.txt") if status == "failed" else None
        records.append(AblationRun(id=run.id, row=run.row, seed=run.seed, **run.components, status=status, error=error,
                                   sweep_value=run.sweep_value))
    state = AblationState(
        name=cfg.name, recipe=str(recipe_path) if recipe_path else None, b_off=cfg.b_off, evaluated=evaluate,
        rows=cfg.rows, seeds=cfg.seeds, updated=_now(),
        started=load_state(out).started if resume and AblationState.exists(out) else _now(),
        sweep=cfg.sweep.key if cfg.sweep is not None else None, runs=records,
    )

    def save() -> None:
        state.updated = _now()
        state.write(out)

    save()
    dataset_cache: dict[str, Any] = {}
    for index, (run, record) in enumerate(zip(runs, records)):
        if record.status == "finished":
            callbacks.run_skipped(run, index, len(runs))
            continue
        callbacks.run_start(run, index, len(runs), record.status == "partial")
        record.status, record.started, record.error = "running", _now(), None
        save()
        try:
            _run_one(run, cfg, dataset_cache, callbacks.search_callbacks(run))
        except KeyboardInterrupt:
            record.status = "partial" if (run.folder / "checkpoint.pt").exists() else "pending"
            save()
            raise
        except Exception as error:  # one failed run must not stop the others
            run.folder.mkdir(parents=True, exist_ok=True)
            mark_run_dir(run.folder, "search")  # the ablation made it: --resume may write into it
            atomic_write_text(run.folder / "error.txt", "".join(traceback.format_exception(error)))
            record.status, record.error, record.ended = "failed", _error_line(error), _now()
        else:
            (run.folder / "error.txt").unlink(missing_ok=True)
            record.status, record.ended = "finished", _now()
        save()
        callbacks.run_end(run, record)

    state.finished = all(r.status == "finished" for r in records)
    save()
    write_ablation_report(out, run_figures=False, chart=cfg.figures)
    return state


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _run_one(run: PlannedRun, cfg: AblationRecipe, dataset_cache: dict, search_callbacks: Any) -> None:
    """Search (or finish a half-written search), write its figures, then evaluate if asked."""
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
        evaluate_genotype(run.folder, eval_recipe(cfg), run.id)


def eval_recipe(cfg: AblationRecipe) -> Optional[EvalRecipe]:
    """The evaluation recipe of the ablation (validated), or None.

    The searches' ``runtime`` overrides (``--set runtime.threads=1``) apply to it
    too, underneath the stage's own overrides.
    """
    if cfg.evaluate is None:
        return None
    settings = deep_merge({"runtime": cfg.overrides.get("runtime", {})}, cfg.evaluate.overrides)
    try:
        return load_recipe(cfg.evaluate.recipe, EvalRecipe, _flatten(settings))
    except RecipeError as error:
        raise RecipeError(f"evaluation recipe of the ablation:\n{error}") from None


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
