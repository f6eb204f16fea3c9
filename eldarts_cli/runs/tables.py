"""The paper's tables (1: CIFAR-10, 2: ImageNet, 3: ablation), NAS-Bench-201's, and every number format
eldarts prints.

Rows are plain dicts with a ``published`` flag and a ``source`` column, so a
renderer (rich in ``cli/``, Markdown here) can never present a figure quoted
from the paper as one measured here. Measured rows come from run folders
through the typed run files (:mod:`eldarts_cli.runs.files`).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config.ablate import BASELINE, components
from ..core.io import text_bytes
from ..data.datasets import DATASETS
from .ablation import read_ablation
from .files import EvalResults, SearchCost, SearchEpoch, SearchSummary
from .folders import ReportFiles, read_metrics, recipe_dataset, run_recipe
from ..models.decisiveness import genotype_agreement
from ..models.genotypes import GENOTYPES
from .published import NB201_CIFAR10, TABLE1_CIFAR10, TABLE2_IMAGENET, TABLE3_ABLATION, is_table2_setting

PUBLISHED_SOURCE = "published (paper)"
MEASURED_SOURCE = "measured"


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------


def fmt_num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_mean_std(mean: Optional[float], std: Optional[float] = None, digits: int = 2) -> str:
    """``2.47 ± 0.13``; the mean alone without a std; ``-`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def fmt_cost(days: Optional[float], unit: Optional[str] = "GPU-days") -> str:
    """A search cost: whole days from 100 on (the paper's 2000, 3150), else 3 significant figures, scientific
    below 1e-3 (CPU searches are tiny in days)."""
    if days is None:
        return "-"
    number = f"{days:.0f}" if days >= 100 else f"{days:.3g}" if days >= 1e-3 else f"{days:.2e}"  # 3150, not 3.15e+03
    return f"{number} {unit or ''}".strip()


def fmt_search_cost(cost: SearchCost) -> str:
    """A search's measured cost on its summary line: ``2.41 GPU-hours = 0.1 GPU-days``; under a tenth of an hour
    in minutes, under a minute in seconds (a tiny search's read "0.0000 CPU-hours = 0.00000 CPU-days")."""
    kind = cost.unit.removesuffix("-days")  # GPU or CPU
    seconds = cost.hours * 3600
    if seconds < 60:
        return f"{seconds:.3g} {kind}-seconds"
    if cost.hours < 0.1:
        return f"{seconds / 60:.3g} {kind}-minutes"
    return f"{cost.hours:.2f} {kind}-hours = {fmt_cost(cost.days, cost.unit)}"


def fmt_published(value: Optional[float], approx: bool = False) -> str:
    """A figure as the paper prints it (3.3, 3.17, 2000, 0.075)."""
    return "-" if value is None else f"{'~' if approx else ''}{value:g}"


def fmt_agreement(edges: Optional[float], ops: Optional[float]) -> str:
    """``75% / 50%``: shares of edges and ops that several genotypes agree on; ``-`` for one genotype."""
    if edges is None or ops is None:
        return "-"
    return f"{100 * edges:.0f}% / {100 * ops:.0f}%"


def fmt_count(value: float) -> str:
    """Millions with as many decimals as small networks need (0.0731, 3.35)."""
    return f"{value:.4g}"


def fmt_macs(value: float) -> str:
    """Millions of MACs: 4 significant digits (0.6954, 546.5), whole millions from 10,000 on (26017, not 2.602e+04)."""
    return f"{value:.0f}" if value >= 10_000 else f"{value:.4g}"


def fmt_duration(seconds: float) -> str:
    """``0.5 s`` under 10 seconds (a half-second run read "0 s"), ``12 s`` under a minute, else ``3.4 min`` (a short
    run's time read "0.0 min")."""
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if round(seconds) < 60 else f"{seconds / 60:.1f} min"


def fmt_hardware(value: Optional[float], unit: Optional[str]) -> str:
    """A hardware cost (hardware-aware search): ``1.23 ms``, ``0.0688 M MACs``, ``3.35 M params``."""
    return "-" if value is None else f"{value:.4g} {unit or ''}".strip()


#: A row's key for its values (``--json``): what a column shows as text, by that column's key, unformatted (a number,
#: ``decided`` a bool, a cell its arch string; ``None`` where the table shows "-"), with a mean's std as
#: ``<key>_std`` and a search cost's unit as ``search_cost_unit``.
VALUES = "values"


def _cost_values(days: Optional[float], unit: Optional[str] = "GPU-days") -> dict:
    return {"search_cost": days, "search_cost_unit": None if days is None else unit}


def json_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows for ``--json``: each column's value unformatted (:data:`VALUES`), a run's 91.9444, not the "91.94" it
    prints."""
    return [{**{k: v for k, v in row.items() if k != VALUES}, **row.get(VALUES, {})} for row in rows]


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """A GitHub Markdown table; published rows are marked in the Source column (and nowhere hidden). A ``|`` in a
    cell (NAS-Bench-201's arch strings) is escaped as ``\\|``, which renders as ``|`` (it was written as ``/``)."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(k, "")).replace("|", "\\|") for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# What tables read of a run
# ---------------------------------------------------------------------------


def method_cost_days(summary: SearchSummary, method: str) -> float:
    """The search cost of the cell ``method`` derived: a magnitude cell of a ``derive.both`` search did not need
    perturbation selection, whose time the run's cost holds."""
    days = summary.search_cost.days
    if method != "perturbation" and summary.derive_seconds:
        days = max(days - summary.derive_seconds / 86400, 0.0)
    return days


def cell_cost_days(run_dir: Path, genotype: Any) -> float:
    """The search cost of ``genotype``, a cell the search in ``run_dir`` derived (an evaluation's Table 1 row): its
    method's (:func:`method_cost_days`), the saved cell's where the search derived no such cell."""
    summary = SearchSummary.read(Path(run_dir))
    cells = genotype.model_dump(exclude={"name"})
    method = next((m for m, g in (summary.genotypes or {}).items() if g.model_dump(exclude={"name"}) == cells),
                  summary.derive_method)
    return method_cost_days(summary, method)


#: The paper's search (section 3.1, ``recipes/search-cifar10.yaml``) and NAS-Bench-201's DARTS-style searches:
#: what a measured search cost beside the published ones is a cost of.
PAPER_SEARCH = {"darts": {"epochs": 50, "channels": 16, "layers": 8, "size": 32},
                "nb201": {"epochs": 50, "channels": 16, "layers": 15, "size": 32}}


def search_differences(run_dir: Path) -> list[str]:
    """Where a search run is not the paper's search (or NAS-Bench-201's): fewer epochs or steps, another supernet,
    smaller images, part of its training images, e.g. ``["4 of 50 epochs", "C=8, 3 cells (paper: C=16, 8)", "16x16
    images (paper: 32x32)", "800 of 50,000 images"]``. Its search cost, printed beside the published ones, is the
    cost of that search. Read from ``summary.json``, else (runs from before it held them) from the run's recipe."""
    run_dir = Path(run_dir)
    recipe, summary = run_recipe(run_dir), SearchSummary.read(run_dir)
    paper = PAPER_SEARCH.get(summary.cell, PAPER_SEARCH["darts"])
    network, data = (recipe.get(key) if isinstance(recipe.get(key), dict) else {} for key in ("network", "data"))
    notes = []
    if summary.epochs != paper["epochs"]:
        notes.append(f"{summary.epochs} of {paper['epochs']} epochs" if summary.epochs < paper["epochs"]
                     else f"{summary.epochs} epochs (paper: {paper['epochs']})")
    steps, all_steps = summary.steps_per_epoch, summary.steps_in_epoch
    if steps is not None and all_steps is not None and steps < all_steps:  # (search.max_steps cut the epochs short)
        notes.append(f"{steps:,} of {all_steps:,} steps an epoch")
    channels = summary.channels if summary.channels is not None else network.get("channels")
    layers = summary.layers if summary.layers is not None else network.get("layers")
    if channels is not None and (channels, layers) != (paper["channels"], paper["layers"]):
        notes.append(f"C={channels}, {layers} cells (paper: C={paper['channels']}, {paper['layers']})")
    if summary.image_size is not None and summary.image_size != paper["size"]:
        notes.append(f"{summary.image_size}x{summary.image_size} images (paper: {paper['size']}x{paper['size']})")
    dataset = summary.dataset or data.get("dataset")
    spec = DATASETS.get(dataset) if dataset in DATASETS else None
    split = summary.train_split_images or (spec.train_images if spec is not None and not spec.made_to_limit else None)
    used = summary.train_images if summary.train_images is not None else data.get("limit")
    if isinstance(used, int) and (split is None or used < split) and not (spec is not None and spec.made_to_limit):
        notes.append(f"{used:,} of {split:,} images" if split else f"{used:,} images")
    return notes


def search_facts(run_dir: Path) -> dict[str, Any]:
    """The numbers of one finished search that tables need."""
    run_dir = Path(run_dir)
    summary = SearchSummary.read(run_dir)
    rows = read_metrics(run_dir, model=SearchEpoch)
    last = rows[-1] if rows else None
    alphas = read_metrics(run_dir, "alphas")
    genotype = summary.genotype
    cost = summary.cost
    margins = summary.margins
    # softmax margins describe the cell the magnitude rule derives: beside a perturbation-chosen cell they were
    # read as its own (its margins are derive_margin_median, in accuracy points)
    soft = None if summary.derive_method == "perturbation" else margins
    cost_days = method_cost_days(summary, summary.derive_method)
    return {
        "cost_metric": None if cost is None else cost.metric,
        "cost_unit": None if cost is None else cost.unit,
        "cost_predicted": None if cost is None else cost.predicted,
        "cost_measured": None if cost is None else cost.measured,
        "cost_error_percent": None if cost is None else cost.error_percent,
        "folder": str(run_dir),
        "name": summary.name,
        "cell": summary.cell,
        "derive_method": summary.derive_method,
        "epochs": summary.epochs,
        "device": summary.device,
        "search_cost_days": cost_days,
        "search_cost_unit": summary.search_cost.unit,
        "search_hours": cost_days * 24,
        "val_error": None if last is None else 100.0 * (1.0 - last.val_acc),
        "skip_normal": genotype.count("skip_connect", reduction=False),
        "skip_reduce": genotype.count("skip_connect", reduction=True),
        "entropy_normal": None if last is None else last.entropy_normal,
        "entropy_reduce": None if last is None else last.entropy_reduce,
        "num_ops": len(alphas[-1]["ops"]) if alphas else None,
        "genotype": genotype,
        "edge_margin_median": None if soft is None else soft.edge_median,
        "node_margin_median": None if soft is None else soft.node_median,
        "decided": None if margins is None else margins.decided,
        "derive_margin_median": summary.derive_margin_median,
    }


# ---------------------------------------------------------------------------
# Tables 1 and 2
# ---------------------------------------------------------------------------

#: (key, heading) pairs; every table row is a dict with these keys plus ``published``.
TABLE1_COLUMNS = (
    ("architecture", "Architecture"),
    ("test_error", "Test Error (%)"),
    ("params_m", "Params (M)"),
    ("search_cost", "Search Cost"),
    ("num_ops", "#ops"),
    ("method", "Search Method"),
    ("source", "Source"),
)
TABLE2_COLUMNS = (
    ("architecture", "Architecture"),
    ("top1_error", "Top-1 Error (%)"),
    ("top5_error", "Top-5 Error (%)"),
    ("params_m", "Params (M)"),
    ("macs_m", "MACs (M)"),
    ("search_cost", "Search Cost"),
    ("method", "Search Method"),
    ("source", "Source"),
)
TABLE3_COLUMNS = (
    ("A", "A"),
    ("B", "B"),
    ("C", "C"),
    ("error", "Error (%)"),
    ("error_metric", "Error of"),
    ("search_cost", "Search Cost"),
    ("skip_normal", "skip"),
    ("entropy_normal", "H(α)"),
    ("margin", "margin"),
    ("agreement", "agree edges/ops"),
    ("runs", "runs"),
    ("source", "Source"),
)
NB201_COLUMNS = (
    ("method", "Method"),
    ("cell", "Cell (arch string)"),
    ("valid_acc", "Valid acc (%)"),
    ("test_acc", "Test acc (%)"),
    ("margin", "median margin"),
    ("search_cost", "Search Cost"),
    ("source", "Source"),
)
#: One row per run of ``eldarts report RUN1 RUN2 ...``.
RUNS_COLUMNS = (
    ("run", "Run"),
    ("genotype", "Genotype"),
    ("edge_margin", "op margin"),
    ("node_margin", "node margin"),
    ("val_error", "search val error (%)"),
    ("decided", "decided"),
)


def _published_row(r, imagenet: bool) -> dict:
    row = {
        "architecture": f"{r.architecture} {r.citation}".strip(),
        "params_m": fmt_published(r.params_m, r.params_approx),
        "search_cost": fmt_cost(r.search_cost_gpu_days),
        "method": r.method,
        "source": PUBLISHED_SOURCE,
        "published": True,
        VALUES: {"params_m": r.params_m, **_cost_values(r.search_cost_gpu_days)},
    }
    if imagenet:
        # the paper prints Table 2's errors with one decimal (26.0, 8.0), Table 1's with two (3.00 ± 0.14)
        row.update(top1_error=fmt_num(r.top1_error, 1), top5_error=fmt_num(r.top5_error, 1),
                   macs_m=fmt_published(r.macs_m))
        row[VALUES].update(top1_error=r.top1_error, top5_error=r.top5_error, macs_m=r.macs_m)
    else:
        row.update(test_error=r.error_text or fmt_mean_std(r.top1_error, r.top1_error_std),
                   num_ops="-" if r.num_ops is None else str(r.num_ops))
        row[VALUES].update(test_error=r.top1_error, test_error_std=r.top1_error_std, num_ops=r.num_ops)
    return row


#: The test sets the paper's tables score on (CIFAR-10's test set, ImageNet's validation set).
FULL_TEST_SET = {"cifar10": 10_000, "imagenet": 50_000, "nb201": 10_000}


#: The training sets of the paper's tables (CIFAR-10's, ImageNet-1k's).
FULL_TRAIN_SET = {"cifar10": 50_000, "imagenet": 1_281_167, "nb201": 50_000}


def _full_train_set(results: EvalResults) -> Optional[int]:
    """The training set a run's data has in full: as the run read it (its split before ``data.limit``); for runs
    from before it was kept, its table's (a JPEG copy of CIFAR-10 is an ``imagefolder``), else its dataset's where
    eldarts' split fixes it (digits' 1,437); ``None`` where unknown, or for images made to ``data.limit``
    (``fake``). (The table's came first: a folder of 300 images of 10 classes at 32x32 read "300 of 50,000".)"""
    spec = DATASETS.get(results.dataset) if results.dataset in DATASETS else None
    if spec is not None and spec.made_to_limit:
        return None
    if results.train_split_images:
        return results.train_split_images
    if results.table in FULL_TRAIN_SET:
        return FULL_TRAIN_SET[results.table]
    return spec.train_images if spec is not None else None


def _test_subset(results: EvalResults) -> list[str]:
    """``["trained on 512 of 50,000 images", "500 of 10,000 test images"]`` where a run used part of its data's
    training set or of its test set (its table's, or as the run read it), else ``[]``."""
    notes = []
    train = _full_train_set(results)
    # (under torchrun an epoch holds a multiple of the process count: 1,436 of 1,437 is every image, over the epochs)
    if train and results.train_images is not None and results.train_images < train - (results.world_size - 1):
        notes.append(f"trained on {results.train_images:,} of {train:,} images")
    full = results.test_split_images or FULL_TEST_SET.get(results.table or "")
    if full and results.test_images is not None and results.test_images < full:
        notes.append(f"{results.test_images:,} of {full:,} test images")
    return notes


#: CIFAR-10's classes in label order, and its splits: an image folder holding them is CIFAR-10 as image files.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_files(dataset: Optional[str], classes: Optional[list[str]], train_images: Optional[int]) -> bool:
    """Whether an image folder is CIFAR-10 as image files (a JPEG copy): its classes and its 50,000 training
    images (it was called "imagefolder, not CIFAR-10" beside CIFAR-10's denominators)."""
    return dataset == "imagefolder" and classes == CIFAR10_CLASSES and train_images == FULL_TRAIN_SET["cifar10"]


def _not_cifar10(dataset: Optional[str], classes: Optional[list[str]], train_images: Optional[int]) -> Optional[str]:
    """The note a row of data other than CIFAR-10 gets, ``None`` for CIFAR-10 (and where the data are unknown)."""
    if dataset in (None, "cifar10"):
        return None
    if cifar10_files(dataset, classes, train_images):
        return "on CIFAR-10 as image files (decoded pixels differ slightly)"
    return f"on {dataset}, not CIFAR-10"


def _searched_on(results: EvalResults) -> Optional[str]:
    """``on digits`` where the cell was searched on other data than CIFAR-10 and than this run's (the paper's cells
    are CIFAR-10's), ``on another image folder`` for two image folders that differ; ``None`` otherwise. CIFAR-10 as
    image files counts as CIFAR-10 (a cell searched on the JPEG copy read "cell searched on imagefolder")."""
    search, own = results.search_dataset, results.dataset
    if search is None:
        return None
    if search == "cifar10" or cifar10_files(search, results.search_classes, results.search_train_split_images):
        return None
    if search != own:
        return f"on {search}"
    if search == "imagefolder" and results.search_classes is not None and (
            (results.search_classes, results.search_train_split_images) != (results.classes,
                                                                             results.train_split_images)):
        return "on another image folder"
    return None


def _search_notes(results: EvalResults) -> list[str]:
    """``["cell searched on digits with 4 of 50 epochs, ..."]``: where an evaluation's cell was searched (its data,
    and a smaller search than the paper's, whose cost the row gives)."""
    searched = [where] if (where := _searched_on(results)) else []
    if results.search_differences:
        searched.append(f"with {', '.join(results.search_differences)}")
    return [f"cell searched {' '.join(searched)}"] if searched else []


def _evaluated_row(results: EvalResults, label: str, imagenet: bool) -> dict:
    notes = _test_subset(results)  # where the run is not the paper's setting: part of the test set, and
    # a cell searched on other data than CIFAR-10 or this run's own (a search and an evaluation of one JPEG
    # copy of CIFAR-10 are both "imagefolder"), or in a smaller search than the paper's (its cost is of that)
    if not imagenet and (other := _not_cifar10(results.dataset, results.classes, results.train_split_images)):
        notes.append(other)
    notes += _search_notes(results)
    row = {
        "architecture": label + (f" ({'; '.join(notes)})" if notes else ""),
        "params_m": fmt_count(results.params_m),  # 3.35, and 0.0366 for a small network (not 0.04)
        "search_cost": fmt_cost(results.search_cost_days, results.search_cost_unit),  # "-" unless from a search run
        # a cell of an eldarts search, or of the zoo (DARTS, PC-DARTS, P-DARTS, GDAS: all gradient-based)
        "method": "gradient" if results.search_run or results.genotype in GENOTYPES else "-",
        "source": MEASURED_SOURCE + f", {results.epochs} epoch{'s' if results.epochs != 1 else ''}",
        "published": False,
        VALUES: {"params_m": results.params_m, **_cost_values(results.search_cost_days, results.search_cost_unit)},
    }
    if imagenet:
        row.update(top1_error=fmt_num(results.test_top1_error), top5_error=fmt_num(results.test_top5_error),
                   macs_m=f"{fmt_macs(results.macs_m)} (thop)")
        row[VALUES].update(top1_error=results.test_top1_error, top5_error=results.test_top5_error,
                            macs_m=results.macs_m)
    else:
        row.update(test_error=fmt_num(results.test_top1_error),
                   num_ops="-" if results.search_num_ops is None else str(results.search_num_ops))
        row[VALUES].update(test_error=results.test_top1_error, test_error_std=None, num_ops=results.search_num_ops)
    return row


def table1_rows(search_runs: Sequence[Path] = (), evaluations: Sequence[EvalResults | Path] = ()) -> list[dict]:
    """Table 1 (CIFAR-10): the paper's rows, then one measured row per run given."""
    rows = [_published_row(r, imagenet=False) for r in TABLE1_CIFAR10]
    for run in search_runs:
        s = search_facts(run)
        summary = SearchSummary.read(run)
        differences = search_differences(run)
        notes = [f"{Path(run).name}, search only",
                 _not_cifar10(recipe_dataset(Path(run)) or summary.dataset, summary.classes, summary.train_split_images),
                 ", ".join(differences)]
        rows.append({
            "architecture": f"{s['name']} ({'; '.join(filter(None, notes))})",
            "test_error": "-",
            "params_m": "-",
            "search_cost": fmt_cost(s["search_cost_days"], s["search_cost_unit"]),
            "num_ops": "-" if s["num_ops"] is None else str(s["num_ops"]),
            "method": "gradient",
            "source": MEASURED_SOURCE,
            "published": False,
            VALUES: {"test_error": None, "test_error_std": None, "params_m": None, "num_ops": s["num_ops"],
                     **_cost_values(s["search_cost_days"], s["search_cost_unit"])},
        })
    for run in evaluations:
        results = run if isinstance(run, EvalResults) else EvalResults.read(run)
        rows.append(_evaluated_row(results, f"{results.genotype} (this run)", imagenet=False))
    return rows


def table2_rows(evaluation: Optional[EvalResults | Path] = None) -> list[dict]:
    """Table 2 (ImageNet, mobile setting): the paper's rows, then the measured evaluation."""
    rows = [_published_row(r, imagenet=True) for r in TABLE2_IMAGENET]
    if evaluation is not None:
        results = evaluation if isinstance(evaluation, EvalResults) else EvalResults.read(evaluation)
        rows.append(_evaluated_row(results, f"{results.genotype} (this run)", imagenet=True))
    return rows


def evaluation_table(results: EvalResults) -> tuple[str, tuple, list[dict]]:
    """``(title, columns, rows)`` of the table an evaluation belongs in: Table 2 (ImageNet) or Table 1."""
    size = results.input_size[-1]
    # decided from the run's network and input, not its stored table: older runs stored "imagenet" for any
    # ImageNet network
    if is_table2_setting(results.network, results.num_classes, size):
        return ("Table 2 (ImageNet, mobile setting): published rows from the EL-DARTS paper, and this run",
                TABLE2_COLUMNS, table2_rows(results))
    if results.is_imagenet:  # an ImageNet network on other data or at another size, or ImageNet with another network
        return (f"this run ({results.network} network on {results.dataset}, {results.num_classes} classes at "
                f"{size}x{size}; the paper's Table 2 is an ImageNet network on ImageNet's 1,000 classes at 224x224)",
                TABLE2_COLUMNS, [_evaluated_row(results, f"{results.genotype} (this run)", imagenet=True)])
    if results.table == "cifar10":
        return ("Table 1 (CIFAR-10): published rows from the EL-DARTS paper, and this run",
                TABLE1_COLUMNS, table1_rows(evaluations=[results]))
    if results.table == "nb201":
        return ("NAS-Bench-201 (CIFAR-10): published rows, and this run", NB201_COLUMNS,
                nb201_rows(evaluations=[results]))
    return (f"this run ({results.dataset}; the paper has no table for it)", TABLE1_COLUMNS,
            [_evaluated_row(results, f"{results.genotype} (this run)", imagenet=False)])


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
    units = sorted({r.get("search_cost_unit") for r in results if r.get("search_cost_unit")})
    # one mean per unit only: an ablation over CPUs and GPUs (--devices) has CPU-days beside GPU-days
    cost_mean, cost_std = mean_std([r.get("search_cost_days") for r in results]) if len(units) <= 1 else (None, None)
    metrics = sorted({r.get("error_metric") for r in results if r.get("error_metric")})
    cost_units = sorted({r["cost_unit"] for r in results if r.get("cost_unit")})
    hw_mean, hw_std = mean_std([r.get("cost_measured") for r in results]) if len(cost_units) <= 1 else (None, None)
    hw_predicted, _ = mean_std([r.get("cost_predicted") for r in results]) if len(cost_units) <= 1 else (None, None)
    margin_mean, margin_std = mean_std([r.get("edge_margin_median") for r in results])
    agreement = genotype_agreement([r["genotype"] for r in results if r.get("genotype") is not None])
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
        "sweep": None,
        "sweep_value": None,
        "cost_unit": " / ".join(cost_units) if cost_units else None,
        "cost_measured_mean": hw_mean,
        "cost_measured_std": hw_std,
        "cost_predicted_mean": hw_predicted,
        "edge_margin_mean": margin_mean,
        "edge_margin_std": margin_std,
        "agreement_edges": None if agreement is None else agreement.edges,
        "agreement_ops": None if agreement is None else agreement.ops,
        "source": MEASURED_SOURCE,
        "published": False,
    }


def run_result(run_dir: Path) -> dict:
    """The numbers of one finished run that Table 3 aggregates.

    The error is the evaluation's test error when ``<run>/eval/results.json``
    exists, otherwise the search's final validation error on the architecture
    half (labelled as such: it is not a test error).
    """
    s = search_facts(run_dir)
    result = {k: s[k] for k in ("search_cost_days", "search_cost_unit", "skip_normal", "skip_reduce",
                                "entropy_normal", "entropy_reduce", "cost_unit", "cost_measured", "cost_predicted",
                                "edge_margin_median", "genotype")}
    eval_dir = Path(run_dir) / "eval"
    if EvalResults.exists(eval_dir):
        evaluation = EvalResults.read(eval_dir)
        result.update(error=evaluation.test_top1_error, error_metric=_on(
            "test error", evaluation.dataset, evaluation.classes, evaluation.train_split_images))
    else:
        summary = SearchSummary.read(run_dir)
        result.update(error=s["val_error"], error_metric=_on("search val error", recipe_dataset(Path(run_dir)),
                                                             summary.classes, summary.train_split_images))
    return result


def _on(metric: str, dataset: Optional[str], classes: Optional[list[str]] = None,
        train_images: Optional[int] = None) -> str:
    """``test error``, or ``test error on digits`` where the data are not CIFAR-10 (the paper's rows are), ``test
    error on CIFAR-10 as image files`` for such a folder (:func:`cifar10_files`)."""
    if dataset in (None, "cifar10"):
        return metric
    if cifar10_files(dataset, classes, train_images):
        return f"{metric} on CIFAR-10 as image files"
    return f"{metric} on {dataset}"


def published_rows() -> list[dict]:
    rows = []
    for r in TABLE3_ABLATION:
        label = "".join(c for c, on in zip("ABC", (r.ess, r.dcss, r.entropy)) if on) or BASELINE
        rows.append({
            "label": label, **components(label), "runs": 3, "failed": 0, "pending": 0,
            "error_metric": "test error", "error_mean": r.top1_error, "error_std": r.top1_error_std,
            "error_text": r.error_text,
            "search_cost_days": r.search_cost_gpu_days, "search_cost_days_std": None, "search_cost_unit": "GPU-days",
            "skip_normal_mean": None, "skip_normal_std": None, "skip_reduce_mean": None,
            "entropy_normal_mean": None, "entropy_normal_std": None, "entropy_reduce_mean": None,
            "sweep": None, "sweep_value": None, "cost_unit": None, "cost_measured_mean": None, "cost_measured_std": None,
            "cost_predicted_mean": None, "edge_margin_mean": None, "edge_margin_std": None, "agreement_edges": None,
            "agreement_ops": None, "source": PUBLISHED_SOURCE, "published": True,
        })
    return rows


def ablation_table(out: Path) -> list[dict]:
    """Table 3 as plain rows: each measured row, followed by the paper's row for the same components.

    Built from what has finished, whichever process ran it: each run's status comes from its folder."""
    out = Path(out)
    state = read_ablation(out)
    # one measured row per component row and, in a cost sweep, per swept value
    by_row: dict[str, dict[Optional[float], list]] = {label: {} for label in state.rows}
    for record in state.runs:
        by_row.setdefault(record.row, {}).setdefault(record.sweep_value, []).append(record)
    published = {r["label"]: r for r in published_rows()}
    rows = []
    for label, groups in by_row.items():
        for value, records in sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or 0.0)):
            results = [run_result(out / r.id) for r in records if r.status == "finished"]
            failed = sum(r.status == "failed" for r in records)
            pending = sum(r.status not in ("finished", "failed") for r in records)
            row = aggregate_row(label, results, failed, pending)
            if value is not None:  # (the value as a number too: the text alone had it)
                row["sweep"], row["sweep_value"] = f"{state.sweep}={value:g}", value
            rows.append(row)
        if label in published:
            rows.append(published[label])
    return rows


def table3_columns(rows: Sequence[dict]) -> tuple[tuple[str, str], ...]:
    """Table 3's columns, with the swept cost setting and the derived networks' cost when the runs have them."""
    columns = list(TABLE3_COLUMNS)
    if any(r.get("sweep") for r in rows):
        columns.insert(3, ("sweep", "Sweep"))
    if any(r.get("cost_predicted_mean") is not None for r in rows):
        columns.insert(columns.index(("search_cost", "Search Cost")), ("cost", "Cost of derived net"))
    return tuple(columns)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(cost, accuracy)`` points no other point beats: none cheaper-or-equal and at least as
    accurate with one of the two strictly better. Sorted by cost."""
    front = []
    for i, (cost, accuracy) in enumerate(points):
        dominated = any(c <= cost and a >= accuracy and (c < cost or a > accuracy)
                        for j, (c, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def accuracy_cost_points(out: Path) -> list[dict]:
    """Each finished run of an ablation with a cost: accuracy (100 - the Table 3 error) against its derived
    network's cost (measured, else predicted), and whether it is on the Pareto front."""
    out = Path(out)
    state = read_ablation(out)  # statuses from the run folders
    points = []
    for record in state.runs:
        if record.status != "finished":
            continue
        result = run_result(out / record.id)
        cost = result["cost_measured"] if result["cost_measured"] is not None else result["cost_predicted"]
        if cost is None or result["error"] is None:
            continue
        group = record.row + (f" {state.sweep}={record.sweep_value:g}" if record.sweep_value is not None else "")
        points.append({"run": record.id, "group": group, "cost": cost, "unit": result["cost_unit"],
                       "measured": result["cost_measured"] is not None, "accuracy": 100.0 - result["error"],
                       "accuracy_of": result["error_metric"].replace("error", "accuracy")})
    for i in pareto_front([(p["cost"], p["accuracy"]) for p in points]):
        points[i]["pareto"] = True
    for point in points:
        point.setdefault("pareto", False)
    return points


CSV_FIELDS = ("source", "label", "A", "B", "C", "runs", "failed", "pending", "error_metric", "error_mean", "error_std",
              "search_cost_days", "search_cost_days_std", "search_cost_unit", "skip_normal_mean", "skip_normal_std",
              "skip_reduce_mean", "entropy_normal_mean", "entropy_normal_std", "entropy_reduce_mean", "sweep",
              "sweep_value", "cost_unit", "cost_measured_mean", "cost_measured_std", "cost_predicted_mean",
              "edge_margin_mean", "edge_margin_std", "agreement_edges", "agreement_ops")


def table3_display(rows: Sequence[dict]) -> list[dict]:
    """Rows as display strings (for rich and Markdown): ✓/✗, mean ± std, source."""
    out = []
    for r in rows:
        out.append({
            "A": "✓" if r["A"] else "✗",
            "B": "✓" if r["B"] else "✗",
            "C": "✓" if r["C"] else "✗",
            "error": r.get("error_text") or fmt_mean_std(r["error_mean"], r["error_std"]),
            "error_metric": r["error_metric"] or "-",
            "search_cost": fmt_cost(r["search_cost_days"], r["search_cost_unit"]),
            "skip_normal": fmt_mean_std(r["skip_normal_mean"], r["skip_normal_std"], 1),
            "entropy_normal": fmt_mean_std(r["entropy_normal_mean"], r["entropy_normal_std"], 3),
            "margin": fmt_mean_std(r.get("edge_margin_mean"), r.get("edge_margin_std"), 3),
            "agreement": fmt_agreement(r.get("agreement_edges"), r.get("agreement_ops")),
            "runs": f"{r['runs']} (paper)" if r["published"] else (
                f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
                + (f" ({r['pending']} not done)" if r["pending"] else "")),
            "source": PUBLISHED_SOURCE if r["published"] else MEASURED_SOURCE,
            "published": r["published"],
            "sweep": r.get("sweep") or "-",
            "cost": _cost_cell(r),
        })
    return out


def _cost_cell(r: dict) -> str:
    """Measured cost of the derived networks (mean ± std), the cost model's prediction when not measured."""
    if r.get("cost_measured_mean") is not None:
        return fmt_hardware(r["cost_measured_mean"], None) + (f" ± {r['cost_measured_std']:.3g}"
                                                              if r.get("cost_measured_std") else "") \
            + f" {r['cost_unit']}"
    if r.get("cost_predicted_mean") is not None:
        return f"{fmt_hardware(r['cost_predicted_mean'], r['cost_unit'])} (predicted)"
    return "-"


def write_table3(out: Path, rows: Sequence[dict]) -> list[Path]:
    """``table3.csv`` (numbers) and ``table3.md`` (display) in the ablation folder."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "source": PUBLISHED_SOURCE if r["published"] else MEASURED_SOURCE,
                         "A": int(r["A"]), "B": int(r["B"]), "C": int(r["C"])})
    csv_path, md_path = Path(out) / "table3.csv", Path(out) / "table3.md"
    files = ReportFiles(out)  # (an edited table, or a file of the user's of its name, is named and left)
    files.write(csv_path, text_bytes(buffer.getvalue()))
    note = (
        "Table 3 (ablation). A = efficient search space, B = DCSS, C = entropy regularisation. "
        "Rows marked 'published (paper)' are quoted from the EL-DARTS paper (test error, CIFAR-10, 3 runs, "
        "GPU-days on a GTX 1080 Ti), not measured here. Measured search cost is wall time of the search on "
        "the device named in each run's summary.json (perturbation selection's included only in the rows of cells "
        "it chose). margin: median over each run's genotype edges of the "
        "chosen op's weight minus the runner-up's (mean ± std over seeds); agree edges/ops: share of kept "
        "edges and of ops the seeds' genotypes have in common (mean over pairs of seeds).\n\n"
    )
    files.write(md_path, text_bytes(note + markdown_table(table3_columns(rows), table3_display(rows))))
    return [csv_path, md_path]


# ---------------------------------------------------------------------------
# NAS-Bench-201, and several search runs side by side
# ---------------------------------------------------------------------------


def nb201_rows(search_runs: Sequence[Path] = (), evaluations: Sequence[EvalResults | Path] = ()) -> list[dict]:
    """NAS-Bench-201 on CIFAR-10: the published rows, then one measured row per search or evaluation.

    A search row gives its cell's arch string: look its accuracies up in
    NAS-Bench-201, or train it with ``eldarts evaluate CELL recipes/eval-nb201-cifar10.yaml``.
    """
    rows = [{
        "method": r.method, "cell": r.arch or "-", "valid_acc": fmt_num(r.valid_acc),
        "test_acc": fmt_mean_std(r.test_acc, r.test_acc_std), "margin": "-", "search_cost": "-",
        "source": "published (NAS-Bench-201)", "published": True,
        VALUES: {"cell": r.arch, "valid_acc": r.valid_acc, "test_acc": r.test_acc, "test_acc_std": r.test_acc_std,
                 "margin": None, **_cost_values(None)},
    } for r in NB201_CIFAR10]
    for run in search_runs:
        s = search_facts(run)
        summary = SearchSummary.read(run)
        # derive.both: each method's cell (the one not saved was left out of the table)
        cells = [(s["derive_method"], s["genotype"], s["edge_margin_median"], s["search_cost_days"])]
        cells += [(method, genotype, summary.margins.edge_median if method == "magnitude" and summary.margins else None,
                   method_cost_days(summary, method))
                  for method, genotype in (summary.genotypes or {}).items() if method != s["derive_method"]]
        # (its cost is of that search; its data, in a table of CIFAR-10's)
        data = _not_cifar10(recipe_dataset(Path(run)) or summary.dataset, summary.classes, summary.train_split_images)
        differences = ([data] if data else []) + search_differences(run)
        for method, genotype, margin, days in cells:
            rows.append({
                "method": f"{s['name']} ({Path(run).name}, {method}"
                          + (f"; {', '.join(differences)})" if differences else ")"), "cell": str(genotype),
                "valid_acc": "-", "test_acc": "-", "margin": fmt_num(margin, 3),
                "search_cost": fmt_cost(days, s["search_cost_unit"]), "source": MEASURED_SOURCE,
                "published": False,
                VALUES: {"valid_acc": None, "test_acc": None, "test_acc_std": None, "margin": margin,
                         **_cost_values(days, s["search_cost_unit"])},
            })
    for run in evaluations:
        results = run if isinstance(run, EvalResults) else EvalResults.read(run)
        test_acc = None if results.test_top1_error is None else 100 - results.test_top1_error
        rows.append({
            "method": f"{results.genotype} ({'; '.join(['trained here', *_nb201_differences(results)])})",
            "cell": str(results.genotype_cells.get("arch", "-")),
            "valid_acc": "-", "test_acc": fmt_num(test_acc),
            "margin": "-", "search_cost": fmt_cost(results.search_cost_days, results.search_cost_unit),
            "source": MEASURED_SOURCE + f", {results.epochs} epoch{'s' if results.epochs != 1 else ''}",
            "published": False,
            VALUES: {"cell": results.genotype_cells.get("arch"), "valid_acc": None, "test_acc": test_acc,
                     "test_acc_std": None, "margin": None,
                     **_cost_values(results.search_cost_days, results.search_cost_unit)},
        })
    return rows


#: NAS-Bench-201's network (its published accuracies): C=16, 3 stages of 5 cells, on 32x32 CIFAR-10.
NB201_BENCHMARK = {"channels": 16, "layers": 15, "size": 32}


def _nb201_differences(results: EvalResults) -> list[str]:
    """Where a NAS-Bench-201 row's run is not the benchmark's setting, beside the published rows: part of the test
    set, another network size or image size, the JPEG copy of CIFAR-10 (close to, not the same as, its files)."""
    notes = _test_subset(results)
    if (results.channels, results.layers) != (NB201_BENCHMARK["channels"], NB201_BENCHMARK["layers"]):
        notes.append(f"C={results.channels}, {results.layers} cells, not the benchmark's C=16, 15 cells")
    if results.input_size[-1] != NB201_BENCHMARK["size"]:
        size = results.input_size[-1]
        notes.append(f"{size}x{size} images, not 32x32")
    if other := _not_cifar10(results.dataset, results.classes, results.train_split_images):
        notes.append(other)
    return notes + _search_notes(results)


def genotype_text(genotype) -> str:
    """One line for a genotype: the arch string, or DARTS' cells as ``op~input`` per node."""
    from ..models.nb201 import NB201Genotype

    if isinstance(genotype, NB201Genotype):
        return genotype.arch
    cells = []
    for label, edges in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        nodes = ["|".join(f"{op}~{src}" for op, src in edges[i : i + 2]) for i in range(0, len(edges), 2)]
        cells.append(f"{label}: " + " + ".join(nodes))
    return "; ".join(cells)


def search_runs_table(folders: Sequence[Path]) -> tuple[list[dict], Optional[dict]]:
    """Several finished searches side by side (``eldarts report RUN1 RUN2 ...``): one row per run with its
    genotype and margins, and the agreement of their genotypes (``None`` for fewer than two)."""
    rows, genotypes = [], []
    for folder in folders:
        s = search_facts(folder)
        genotypes.append(s["genotype"])
        rows.append({
            "run": s["name"] if s["name"] == Path(folder).name else f"{s['name']} ({Path(folder).name})",
            "genotype": genotype_text(s["genotype"]),
            "edge_margin": fmt_num(s["edge_margin_median"], 3),
            "node_margin": fmt_num(s["node_margin_median"], 3),
            "val_error": fmt_num(s["val_error"]),
            "decided": "-" if s["decided"] is None else ("yes" if s["decided"] else "no"),
            "published": False,
            "edge_margin_median": s["edge_margin_median"],
            "node_margin_median": s["node_margin_median"],
            VALUES: {"edge_margin": s["edge_margin_median"], "node_margin": s["node_margin_median"],
                     "val_error": s["val_error"], "decided": s["decided"]},
        })
    agreement = genotype_agreement(genotypes)
    return rows, None if agreement is None else agreement.model_dump()
