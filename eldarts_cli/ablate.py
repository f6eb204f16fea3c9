"""The ablation study of paper section 3.4 (Table 3) as one resumable command.

The paper builds EL-DARTS on "the Partial Connection baseline (X) derived
from PC-DARTS" and toggles three components:

* **A** efficient search space (ESS, 2.2.1): on = ``search_space.ops: ess``
  (4 ops); off = ``darts`` (the 8 DARTS ops).
* **B** DCSS (2.3): on = learnable edge coefficients initialised from
  ``U(low, high)`` (eq. 3). Off depends on ``b_off``: ``pc-darts`` (default)
  keeps PC-DARTS' edge normalisation (coefficients ``1e-3 * N(0, 1)``),
  because the baseline X is PC-DARTS, which has it; ``none`` removes edge
  coefficients altogether (edges summed unweighted, as in DARTS).
* **C** entropy regularisation (2.4): ``entropy.enabled``.

Partial channels stay on in every row. Each (row, seed) search runs in its
own folder ``<out>/<row>-seed<k>/``; runs are scheduled seed-major (every row
with the first seed, then the second seed...) so an interrupted ablation
already has one result per row. Runs are sequential in one process; to
spread an ablation over several GPUs, start one ``eldarts ablate`` per GPU
on disjoint ``rows`` or ``seeds`` with ``--set runtime.device=cuda:N``.

State lives in ``<out>/ablation.json``; a run whose ``summary.json`` says
finished is skipped on ``--resume``, a half-written one resumes from its
checkpoint, and a run that raises gets ``error.txt`` and does not stop the
others.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Sequence

from pydantic import Field, field_validator, model_validator

from .errors import RecipeError, RunFolderError
from .recipe import (
    SearchRecipe,
    StrictModel,
    apply_overrides,
    deep_merge,
    read_recipe_dict,
    recipe_to_dict,
    validate_recipe,
)
from .registry import suggest
from .runs import atomic_write_text, holds_run, read_json, write_json

COMPONENTS = {
    "A": "efficient search space (ESS, paper 2.2.1)",
    "B": "dynamic coefficient scheduling (DCSS, paper 2.3)",
    "C": "entropy regularisation (paper 2.4)",
}
#: Label of the row with every component off: the paper's baseline X.
BASELINE = "X"
#: Table 3's rows, in the paper's order.
PAPER_ROWS = ("X", "AB", "AC", "BC", "ABC")
#: All 2^3 rows, from the baseline to the full model.
GRID_ROWS = tuple(
    "".join(c for c, on in zip("ABC", bits) if on) or BASELINE
    for bits in sorted(itertools.product((False, True), repeat=3), key=lambda b: (sum(b), [not x for x in b]))
)

STATE_FILE = "ablation.json"
RECIPE_FILE = "ablation.yaml"


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


def row_label(value: Any) -> str:
    """Canonical label of a row: ``"ABC"``, ``"AC"``, ``"X"`` (all off).

    Accepts a string of component letters (``"abc"``, ``"X"``, ``"none"``, ``""``)
    or a mapping ``{A: true, B: false, C: true}``.
    """
    if isinstance(value, dict):
        unknown = [k for k in value if str(k) not in COMPONENTS]
        if unknown:
            name = str(unknown[0])
            raise ValueError(f"unknown component '{name}'{suggest(name, list(COMPONENTS))}; components are {_names()}")
        bad = [k for k, v in value.items() if not isinstance(v, bool)]
        if bad:
            raise ValueError(f"component {bad[0]} must be true or false, got {value[bad[0]]!r}")
        on = {str(k) for k, v in value.items() if v}
        return "".join(c for c in COMPONENTS if c in on) or BASELINE
    if not isinstance(value, str):
        raise ValueError(f"a row is a string of component letters like 'AB' or a mapping {{A: true, ...}}, got {value!r}")
    text = value.strip().upper()
    if text in ("", BASELINE, "NONE"):
        return BASELINE
    unknown = sorted({c for c in text if c not in COMPONENTS})
    if unknown:
        raise ValueError(f"row '{value}' names unknown component(s) {', '.join(unknown)}; components are {_names()} "
                         f"(and '{BASELINE}' for none)")
    if len(set(text)) != len(text):
        raise ValueError(f"row '{value}' names a component twice")
    return "".join(c for c in COMPONENTS if c in text)


def _names() -> str:
    return ", ".join(f"{c} = {d}" for c, d in COMPONENTS.items())


def components(label: str) -> dict[str, bool]:
    return {c: c in label for c in COMPONENTS}


def component_settings(label: str, b_off: str) -> dict:
    """The recipe sections one row sets (see the module docstring)."""
    on = components(label)
    if on["B"]:
        edges = {"enabled": True, "init": "uniform"}
    elif b_off == "pc-darts":
        edges = {"enabled": True, "init": "normal"}
    else:
        edges = {"enabled": False}
    return {
        "search_space": {"ops": "ess" if on["A"] else "darts"},
        "edge_coefficients": edges,
        "entropy": {"enabled": on["C"]},
    }


# ---------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------


def _settings(value: Any) -> Any:
    """``--set`` strings (a list) or nested mapping -> nested mapping."""
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ValueError("give overrides as a mapping of recipe sections or a list of 'key=value' strings")
        try:
            return apply_overrides({}, list(value))
        except RecipeError as error:
            raise ValueError(str(error)) from None
    return value


class EvaluateStage(StrictModel):
    """Evaluate each searched genotype with an evaluation recipe (``eldarts evaluate``)."""

    recipe: Path = Field(description="evaluation recipe, relative to the ablation recipe")
    overrides: dict[str, Any] = Field(default_factory=dict, description="mapping or list of key=value applied to it")

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        return _settings(value)


class AblationRecipe(StrictModel):
    """Which rows of Table 3 to run, on which base search recipe, with which seeds."""

    name: str = "ablation"
    base: Path = Field(description="search recipe every run starts from, relative to this file")
    rows: list[str] = Field(default_factory=lambda: list(PAPER_ROWS),
                            description="'paper' (Table 3's five rows), 'grid' (all 8) or a list like [ABC, AB, X]")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="one search per seed and row (paper: 3)")
    b_off: Literal["pc-darts", "none"] = Field(
        "pc-darts", description="B off: PC-DARTS edge normalisation (the paper's baseline X) or no edge coefficients")
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every search (mapping or key=value list)")
    row_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per row label, applied last")
    evaluate: Optional[EvaluateStage] = Field(None, description="evaluate each searched genotype (default: no)")
    figures: bool = Field(True, description="write each run's figures when it finishes")

    @field_validator("rows", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            if key == "paper":
                return list(PAPER_ROWS)
            if key == "grid":
                return list(GRID_ROWS)
            if all(c.upper() in COMPONENTS for c in value.strip()) and value.strip():
                value = [value]
            else:
                raise ValueError(f"rows: give 'paper', 'grid' or a list of rows, got {value!r}")
        if not isinstance(value, list) or not value:
            raise ValueError("rows: give 'paper', 'grid' or a non-empty list of rows")
        labels = [row_label(v) for v in value]
        if len(set(labels)) != len(labels):
            twice = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"row(s) {', '.join(twice)} listed twice")
        return labels

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError("a seed is listed twice")
        return seeds

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        return _settings(value)

    @field_validator("row_overrides", mode="before")
    @classmethod
    def _row_overrides(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, settings in value.items():
            try:
                label = row_label(str(key))
            except ValueError as error:
                raise ValueError(f"row_overrides: {error}") from None
            out[label] = _settings(settings)
        return out

    @model_validator(mode="after")
    def _row_overrides_name_rows(self) -> "AblationRecipe":
        extra = [k for k in self.row_overrides if k not in self.rows]
        if extra:
            raise ValueError(f"row_overrides names row(s) {', '.join(extra)} that are not in rows ({', '.join(self.rows)})")
        return self


def load_ablation(path: Path | str, sets: Sequence[str] = ()) -> AblationRecipe:
    """Read an ablation recipe; paths in it are made relative to its folder.

    ``sets`` are ``key=value`` strings: a key that starts with a field of the
    ablation recipe (``seeds=[0]``, ``rows=[ABC]``) sets that field; any other
    key (``search.epochs=2``, ``runtime.threads=1``) is applied to every search.
    """
    path = Path(path)
    data, lines = read_recipe_dict(path)
    if isinstance(data.get("overrides"), list):  # so that --set can add to it
        data["overrides"] = _settings_or_error(data["overrides"], f"{path}: overrides")
    own, search = [], []
    for item in sets:
        head = item.split("=", 1)[0].split(".", 1)[0].strip()
        (own if head in AblationRecipe.model_fields else search).append(item)
    data = apply_overrides(data, own)
    if search:
        current = data.get("overrides") or {}
        if not isinstance(current, dict):
            raise RecipeError(f"{path}: [overrides] give a mapping or a list of 'key=value' strings")
        data["overrides"] = apply_overrides(current, search)
    recipe = validate_recipe(data, AblationRecipe, str(path), lines)
    folder = path.parent
    updates: dict[str, Any] = {"base": _relative_to(recipe.base, folder)}
    if recipe.evaluate is not None:
        updates["evaluate"] = recipe.evaluate.model_copy(update={"recipe": _relative_to(recipe.evaluate.recipe, folder)})
    recipe = recipe.model_copy(update=updates)
    if not recipe.base.is_file():
        raise RecipeError(f"{path}: [base] search recipe {recipe.base} does not exist")
    if recipe.evaluate is not None and not recipe.evaluate.recipe.is_file():
        raise RecipeError(f"{path}: [evaluate -> recipe] evaluation recipe {recipe.evaluate.recipe} does not exist")
    return recipe


def _settings_or_error(value: Any, where: str) -> dict:
    try:
        return _settings(value)
    except ValueError as error:
        raise RecipeError(f"{where}: {error}") from None


def _relative_to(path: Path, folder: Path) -> Path:
    return path if path.is_absolute() else folder / path


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    id: str  # folder name: "<row>-seed<k>"
    row: str
    seed: int
    folder: Path
    recipe: SearchRecipe

    @property
    def components(self) -> dict[str, bool]:
        return components(self.row)


def run_id(row: str, seed: int) -> str:
    return f"{row}-seed{seed}"


def plan_ablation(cfg: AblationRecipe, out: Path) -> list[PlannedRun]:
    """Every (row, seed) search recipe, validated before anything runs (seed-major order)."""
    base, lines = read_recipe_dict(cfg.base)
    eval_recipe(cfg)  # a bad evaluation recipe stops the ablation before any search
    runs = []
    for seed in cfg.seeds:
        for row in cfg.rows:
            data = deep_merge(base, cfg.overrides)
            data = deep_merge(data, component_settings(row, cfg.b_off))
            data = deep_merge(data, cfg.row_overrides.get(row, {}))
            data = deep_merge(data, {"seed": seed, "name": f"{cfg.name}-{run_id(row, seed)}"})
            try:
                recipe = validate_recipe(data, SearchRecipe, str(cfg.base), lines)
            except RecipeError as error:
                raise RecipeError(f"run {run_id(row, seed)} (row {row}, seed {seed}):\n{error}") from None
            runs.append(PlannedRun(run_id(row, seed), row, seed, Path(out) / run_id(row, seed), recipe))
    return runs


def run_status(folder: Path, evaluate: bool = False) -> str:
    """``finished``, ``partial`` (has a checkpoint), ``failed`` (error.txt, no checkpoint) or ``pending``."""
    summary = folder / "summary.json"
    searched = False
    if summary.exists():
        try:
            searched = bool(read_json(summary).get("finished"))
        except (ValueError, OSError):
            searched = False
    if searched and (not evaluate or (folder / "eval" / "results.json").exists()):
        return "finished"
    if searched or (folder / "checkpoint.pt").exists():
        return "partial"
    if (folder / "error.txt").exists():
        return "failed"
    return "pending"


def check_existing(runs: Sequence[PlannedRun]) -> None:
    """Refuse to mix runs made with another recipe into the table (only ``runtime`` may differ)."""
    import yaml

    from .recipe import recipe_differences
    from .search import RESUMABLE_CHANGES

    problems = []
    for run in runs:
        path = run.folder / "recipe.yaml"
        if not path.exists():
            continue
        try:
            old = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            problems.append(f"{run.id}: recipe.yaml is not valid YAML")
            continue
        diffs = recipe_differences(old or {}, recipe_to_dict(run.recipe), RESUMABLE_CHANGES)
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
    def run_end(self, run: PlannedRun, record: dict) -> None: ...
    def search_callbacks(self, run: PlannedRun) -> Any: ...


class _Quiet:
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


def load_state(out: Path) -> dict:
    path = Path(out) / STATE_FILE
    try:
        state = read_json(path)
    except FileNotFoundError:
        raise RunFolderError(f"{out} holds no ablation ({STATE_FILE} is missing)") from None
    except ValueError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("runs"), list):
        raise RunFolderError(f"{path} is not an ablation state file")
    return state


def prepare_ablation_dir(out: Path, runs: Sequence[PlannedRun], resume: bool) -> None:
    out = Path(out)
    if resume:
        if not (out / STATE_FILE).exists():
            raise RunFolderError(f"cannot resume: {out} holds no ablation ({STATE_FILE} is missing); "
                                 f"start it without --resume")
        return
    if (out / STATE_FILE).exists():
        raise RunFolderError(f"{out} already holds an ablation; continue it with --resume, or choose another --out")
    if holds_run(out):
        raise RunFolderError(f"{out} holds a single run, not an ablation; choose another --out")
    started = [r.id for r in runs if holds_run(r.folder)]
    if started:
        raise RunFolderError(f"{out} already holds run(s) {', '.join(started)}; continue with --resume")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)


def run_ablation(
    cfg: AblationRecipe,
    out: Path,
    *,
    resume: bool = False,
    recipe_path: Optional[Path] = None,
    callbacks: Optional[AblationCallbacks] = None,
) -> dict:
    """Run (or continue) every search of the ablation; returns the state written to ``ablation.json``.

    A run that raises is recorded as failed (``<run>/error.txt`` holds the
    traceback) and the next one starts; ``KeyboardInterrupt`` stops the
    ablation after saving the state, and ``--resume`` picks up where it was.
    """
    import yaml

    out = Path(out)
    callbacks = callbacks or _Quiet()
    runs = plan_ablation(cfg, out)
    prepare_ablation_dir(out, runs, resume)
    check_existing(runs)
    atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(recipe_to_dict(cfg), sort_keys=False))
    evaluate = cfg.evaluate is not None
    state = {
        "kind": "ablation",
        "name": cfg.name,
        "recipe": str(recipe_path) if recipe_path else None,
        "b_off": cfg.b_off,
        "evaluated": evaluate,
        "rows": cfg.rows,
        "seeds": cfg.seeds,
        "started": _now(),
        "updated": _now(),
        "runs": [],
    }
    if resume:
        old = load_state(out)
        state["started"] = old.get("started", state["started"])
    records = {}
    for run in runs:
        status = run_status(run.folder, evaluate)
        records[run.id] = {"id": run.id, "row": run.row, "seed": run.seed, **run.components, "status": status}
        if status == "failed":
            records[run.id]["error"] = _last_line(run.folder / "error.txt")
    state["runs"] = list(records.values())
    write_json(out / STATE_FILE, state)

    dataset_cache: dict[str, Any] = {}
    for index, run in enumerate(runs):
        record = records[run.id]
        if record["status"] == "finished":
            callbacks.run_skipped(run, index, len(runs))
            continue
        resuming = record["status"] == "partial"
        callbacks.run_start(run, index, len(runs), resuming)
        record.update(status="running", started=_now())
        record.pop("error", None)
        write_json(out / STATE_FILE, {**state, "updated": _now()})
        try:
            _run_one(run, cfg, dataset_cache, callbacks.search_callbacks(run))
        except KeyboardInterrupt:
            record["status"] = "partial" if (run.folder / "checkpoint.pt").exists() else "pending"
            write_json(out / STATE_FILE, {**state, "updated": _now()})
            raise
        except Exception as error:  # one failed run must not stop the others
            run.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.folder / "error.txt", "".join(traceback.format_exception(error)))
            record.update(status="failed", error=_error_line(error), ended=_now())
        else:
            error_file = run.folder / "error.txt"
            if error_file.exists():
                error_file.unlink()
            record.update(status="finished", ended=_now())
        write_json(out / STATE_FILE, {**state, "updated": _now()})
        callbacks.run_end(run, record)

    state["updated"] = _now()
    state["finished"] = all(r["status"] == "finished" for r in state["runs"])
    write_json(out / STATE_FILE, state)
    write_table3(out, ablation_table(out))
    if cfg.figures and any(r["status"] == "finished" for r in state["runs"]):
        from .report import plot_ablation, FIGURES

        rows = ablation_table(out)
        if any(not r["published"] and r.get("error_mean") is not None for r in rows):
            (out / FIGURES).mkdir(exist_ok=True)
            plot_ablation(rows, out / FIGURES / "ablation_error")
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
    from .data import load_images
    from .search import Searcher

    recipe = run.recipe
    summary = run.folder / "summary.json"
    searched = summary.exists() and bool(read_json(summary).get("finished"))
    if not searched:
        run.folder.mkdir(parents=True, exist_ok=True)
        key = recipe.data.model_dump_json()
        if key not in dataset_cache:
            dataset_cache.clear()  # keep one dataset in memory
            dataset_cache[key] = load_images(recipe.data, "train")
        resume = (run.folder / "checkpoint.pt").exists()
        searcher = Searcher(recipe, run.folder, resume=resume, callbacks=search_callbacks,
                            dataset=dataset_cache[key])
        searcher.run()
        if cfg.figures:
            from .report import write_search_report

            write_search_report(run.folder)
    if cfg.evaluate is not None and not (run.folder / "eval" / "results.json").exists():
        evaluate_genotype(run.folder, eval_recipe(cfg), run.id)


def eval_recipe(cfg: AblationRecipe):
    """The evaluation recipe of the ablation (validated), or None.

    The searches' ``runtime`` overrides (``--set runtime.threads=1``) apply to it
    too, underneath the stage's own overrides.
    """
    if cfg.evaluate is None:
        return None
    try:
        from .evaluate import EvalRecipe
    except ModuleNotFoundError as error:
        if error.name and error.name.endswith(".evaluate"):
            raise RecipeError("this ablation's 'evaluate' stage needs `eldarts evaluate`, which is not installed") from None
        raise
    from .recipe import load_recipe

    settings = deep_merge({"runtime": cfg.overrides.get("runtime", {})}, cfg.evaluate.overrides)
    try:
        return load_recipe(cfg.evaluate.recipe, EvalRecipe, _flatten(settings))
    except RecipeError as error:
        raise RecipeError(f"evaluation recipe of the ablation:\n{error}") from None


def evaluate_genotype(search_dir: Path, recipe: Any, run_name: str) -> dict:
    """Train the searched genotype from scratch with ``eldarts evaluate`` into ``<search_dir>/eval``."""
    from .evaluate import run_evaluation
    from .genotypes import load_genotype

    genotype = load_genotype(search_dir).model_copy(update={"name": run_name})
    eval_dir = Path(search_dir) / "eval"
    results = run_evaluation(recipe, genotype, eval_dir, resume=(eval_dir / "checkpoint.pt").exists())
    try:
        from .report import write_eval_report

        write_eval_report(eval_dir)
    except RunFolderError:
        pass
    return results


def _flatten(settings: dict, prefix: str = "") -> list[str]:
    """Nested mapping -> ``key=value`` strings (values as YAML flow scalars)."""
    import json

    items = []
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            items += _flatten(value, path + ".")
        else:
            items.append(f"{path}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    return items


# ---------------------------------------------------------------------------
# Table 3
# ---------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate_row(label: str, results: Sequence[dict], failed: int = 0, pending: int = 0) -> dict:
    """One measured Table 3 row from per-run results.

    Each result has ``error`` (%), ``error_metric``, ``search_cost_days``,
    ``search_cost_unit``, ``skip_normal``, ``entropy_normal`` (and optionally
    ``skip_reduce``, ``entropy_reduce``).
    """
    error_mean, error_std = mean_std([r.get("error") for r in results])
    cost_mean, cost_std = mean_std([r.get("search_cost_days") for r in results])
    units = sorted({r.get("search_cost_unit") for r in results if r.get("search_cost_unit")})
    metrics = sorted({r.get("error_metric") for r in results if r.get("error_metric")})
    skip_mean, skip_std = mean_std([r.get("skip_normal") for r in results])
    skip_r_mean, _ = mean_std([r.get("skip_reduce") for r in results])
    ent_mean, ent_std = mean_std([r.get("entropy_normal") for r in results])
    ent_r_mean, _ = mean_std([r.get("entropy_reduce") for r in results])
    return {
        "label": label,
        **components(label),
        "runs": len(results),
        "failed": failed,
        "pending": pending,
        "error_metric": " / ".join(metrics) if metrics else None,
        "error_mean": error_mean,
        "error_std": error_std,
        "search_cost_days": cost_mean,
        "search_cost_days_std": cost_std,
        "search_cost_unit": " / ".join(units) if units else None,
        "skip_normal_mean": skip_mean,
        "skip_normal_std": skip_std,
        "skip_reduce_mean": skip_r_mean,
        "entropy_normal_mean": ent_mean,
        "entropy_normal_std": ent_std,
        "entropy_reduce_mean": ent_r_mean,
        "published": False,
    }


def run_result(run_dir: Path) -> dict:
    """The numbers of one finished run that Table 3 aggregates.

    The error is the evaluation's test error when ``<run>/eval/results.json``
    exists, otherwise the search's final validation error on the architecture
    half (labelled as such: it is not a test error).
    """
    from .report import evaluation_results, search_summary

    s = search_summary(run_dir)
    result = {k: s[k] for k in ("search_cost_days", "search_cost_unit", "skip_normal", "skip_reduce",
                                "entropy_normal", "entropy_reduce")}
    eval_dir = Path(run_dir) / "eval"
    if (eval_dir / "results.json").exists():
        result.update(error=evaluation_results(eval_dir)["top1_error"], error_metric="test error")
    else:
        result.update(error=s["val_error"], error_metric="search val error")
    return result


def published_rows() -> list[dict]:
    from .published import TABLE3_ABLATION

    rows = []
    for r in TABLE3_ABLATION:
        label = "".join(c for c, on in zip("ABC", (r.ess, r.dcss, r.entropy)) if on) or BASELINE
        rows.append({
            "label": label, **components(label), "runs": 3, "failed": 0, "pending": 0,
            "error_metric": "test error", "error_mean": r.top1_error, "error_std": r.top1_error_std,
            "search_cost_days": r.search_cost_gpu_days, "search_cost_days_std": None, "search_cost_unit": "GPU-days",
            "skip_normal_mean": None, "skip_normal_std": None, "skip_reduce_mean": None,
            "entropy_normal_mean": None, "entropy_normal_std": None, "entropy_reduce_mean": None,
            "published": True,
        })
    return rows


def ablation_table(out: Path) -> list[dict]:
    """Table 3 as plain rows: each measured row, followed by the paper's row for the same components."""
    out = Path(out)
    state = load_state(out)
    by_row: dict[str, list[dict]] = {label: [] for label in state.get("rows", [])}
    for record in state["runs"]:
        by_row.setdefault(record["row"], []).append(record)
    published = {r["label"]: r for r in published_rows()}
    rows = []
    for label, records in by_row.items():
        results = [run_result(out / r["id"]) for r in records if r["status"] == "finished"]
        failed = sum(r["status"] == "failed" for r in records)
        pending = sum(r["status"] not in ("finished", "failed") for r in records)
        rows.append(aggregate_row(label, results, failed, pending))
        if label in published:
            rows.append(published[label])
    return rows


CSV_FIELDS = ("source", "label", "A", "B", "C", "runs", "failed", "pending", "error_metric", "error_mean", "error_std",
              "search_cost_days", "search_cost_days_std", "search_cost_unit", "skip_normal_mean", "skip_normal_std",
              "skip_reduce_mean", "entropy_normal_mean", "entropy_normal_std", "entropy_reduce_mean")


def _fmt(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def format_cost(days: Optional[float], unit: Optional[str]) -> str:
    if days is None:
        return "-"
    number = f"{days:.3g}" if days >= 1e-3 else f"{days:.2e}"
    return f"{number} {unit or ''}".strip()


def table3_display(rows: Sequence[dict]) -> list[dict]:
    """Rows as display strings (for rich and Markdown): ✓/✗, mean ± std, source."""
    from .report import MEASURED_SOURCE, PUBLISHED_SOURCE

    out = []
    for r in rows:
        out.append({
            "A": "✓" if r["A"] else "✗",
            "B": "✓" if r["B"] else "✗",
            "C": "✓" if r["C"] else "✗",
            "error": _fmt(r["error_mean"], r["error_std"]),
            "error_metric": r["error_metric"] or "-",
            "search_cost": format_cost(r["search_cost_days"], r["search_cost_unit"]),
            "skip_normal": _fmt(r["skip_normal_mean"], r["skip_normal_std"], 1),
            "entropy_normal": _fmt(r["entropy_normal_mean"], r["entropy_normal_std"], 3),
            "runs": "-" if r["published"] else (
                f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
                + (f" ({r['pending']} not done)" if r["pending"] else "")),
            "source": PUBLISHED_SOURCE if r["published"] else MEASURED_SOURCE,
            "published": r["published"],
        })
    return out


def write_table3(out: Path, rows: Sequence[dict]) -> list[Path]:
    """``table3.csv`` (numbers) and ``table3.md`` (display) in the ablation folder."""
    import csv
    import io

    from .report import PUBLISHED_SOURCE, MEASURED_SOURCE, TABLE3_COLUMNS, markdown_table

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "source": PUBLISHED_SOURCE if r["published"] else MEASURED_SOURCE,
                         "A": int(r["A"]), "B": int(r["B"]), "C": int(r["C"])})
    csv_path, md_path = Path(out) / "table3.csv", Path(out) / "table3.md"
    atomic_write_text(csv_path, buffer.getvalue())
    note = (
        "Table 3 (ablation). A = efficient search space, B = DCSS, C = entropy regularisation. "
        "Rows marked 'published (paper)' are quoted from the EL-DARTS paper (test error, CIFAR-10, 3 runs, "
        "GPU-days on a GTX 1080 Ti), not measured here. Measured search cost is wall time of the search on "
        "the device named in each run's summary.json.\n\n"
    )
    atomic_write_text(md_path, note + markdown_table(TABLE3_COLUMNS, table3_display(rows)))
    return [csv_path, md_path]
