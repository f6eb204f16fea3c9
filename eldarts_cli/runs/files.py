"""Typed run files: one pydantic model per file a run writes, used by the writer and by every reader.

=====================  ===========================  ============================
file                   model                        written by
=====================  ===========================  ============================
``summary.json``       :class:`SearchSummary`       ``eldarts search`` (at the end)
``metrics.jsonl``      :class:`SearchEpoch`         ``eldarts search`` (each epoch)
``alphas.jsonl``       :class:`AlphaEpoch`          ``eldarts search`` (each epoch)
``results.json``       :class:`EvalResults`         ``eldarts evaluate`` (at the end)
``metrics.jsonl``      :class:`EvalEpoch`           ``eldarts evaluate`` (each epoch)
``ablation.json``      :class:`AblationState`       ``eldarts ablate`` (a snapshot, see ``runs.ablation``)
``ablation-run.json``  :class:`AblationRunRecord`   ``eldarts ablate`` (in each run folder, by its claim holder)
``derive.json``        :class:`DeriveResult`        ``eldarts search`` (perturbation selection)
=====================  ===========================  ============================

Models keep keys they do not know (``extra="allow"``), so a folder written by
a newer eldarts still reads; a file that lacks what a reader needs gives one
:class:`~eldarts_cli.core.errors.RunFolderError` naming the file and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.errors import RunFolderError
from ..core.io import read_json, write_json
from ..core.validation import format_validation_error
from ..models.decisiveness import Margins
from ..models.genotypes import AnyGenotype

F = TypeVar("F", bound="RunFile")


class RunRecord(BaseModel):
    """Base of every run-file model (a file or one row of a ``.jsonl`` file)."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def parse(cls, data: Any, origin: str):
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = format_validation_error(error, cls, origin, separator="\n").replace(f"{origin}: ", "")
            lines = problems.splitlines()
            if len(lines) > 3:  # a file of another tool fails on every field: the first few say enough
                lines = lines[:3] + [f"and {len(lines) - 3} more"]
            what = getattr(cls, "FILE", None) or "run record"
            raise RunFolderError(f"{origin} is not an eldarts {what} (another tool's, or damaged): "
                                 + "; ".join(lines)) from None

    def dump(self) -> dict:
        return self.model_dump(mode="json")


class RunFile(RunRecord):
    """A JSON file of a run folder, named by ``FILE``."""

    FILE: ClassVar[str]

    @classmethod
    def path(cls, folder: Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return cls.path(folder).is_file()

    @classmethod
    def read(cls: type[F], folder: Path) -> F:
        path = cls.path(folder)
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise RunFolderError(f"{folder} holds no {cls.FILE}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{path} is not valid JSON ({error})") from None
        except OSError as error:
            raise RunFolderError(f"cannot read {path}: {error.strerror}") from None
        return cls.parse(data, str(path))

    def write(self, folder: Path) -> Path:
        path = self.path(folder)
        write_json(path, self.dump())
        return path


# ---------------------------------------------------------------------------
# A search run
# ---------------------------------------------------------------------------


#: A measured amount that cannot be below zero (a time, a cost, a size) and a percentage: a file edited to hold
#: another is refused as damaged rather than shown as a measured result.
Amount = Annotated[float, Field(ge=0)]
Percent = Annotated[float, Field(ge=0, le=100)]


class SearchCost(BaseModel):
    """Measured wall time of the search: ``unit`` is ``GPU-days`` on CUDA, ``CPU-days`` on the CPU."""

    unit: str
    hours: Amount
    days: Amount


class HardwareCost(BaseModel):
    """Hardware-aware search: the derived network's cost as the cost model predicts it and as measured.

    ``expected`` is the cost model's expectation under the final architecture
    weights, ``predicted`` its value for the derived genotype, ``measured``
    what thop, a parameter count or a timed forward gave (``measured_by``);
    ``error_percent`` is ``100 * (predicted - measured) / measured``. Units: ``unit``.
    """

    model_config = ConfigDict(extra="allow")

    metric: str
    unit: str
    target: float
    form: str
    weight: float
    network: str
    layout: str
    expected: float
    predicted: float
    measured: Optional[float] = None
    measured_iqr: Optional[float] = None
    measured_by: str
    error_percent: Optional[float] = None
    within_target: bool
    table: Optional[str] = None
    table_device: Optional[str] = None
    foreign_table: bool = False
    note: Optional[str] = None


class SearchSummary(RunFile):
    """``genotype`` is the one ``derive.method`` chose; ``genotypes`` holds each method's when both ran.
    ``margins`` are those of the magnitude rule (``models/decisiveness.py``); ``derive_margin_median``
    the median accuracy points separating a perturbation decision from its runner-up."""

    FILE: ClassVar[str] = "summary.json"

    finished: bool
    name: str
    epochs: int
    device: str
    search_seconds: float
    search_cost: SearchCost
    genotype: AnyGenotype
    skip_normal: int
    torch: str
    cost: Optional[HardwareCost] = None
    cell: str = "darts"
    derive_method: str = "magnitude"
    genotypes: Optional[dict[str, AnyGenotype]] = None
    margins: Optional[Margins] = None
    derive_margin_median: Optional[float] = None
    derive_seconds: Optional[float] = None
    # the training split's images before data.limit, and its classes (what its Table rows say of its data); the
    # search's size (what its rows say of it beside the paper's): its data, image size, supernet, steps an epoch
    # (search.max_steps applied) of the steps its data gave
    train_split_images: Optional[int] = None
    train_images: Optional[int] = None  # those searched (data.limit applied), both halves
    classes: Optional[list[str]] = None
    dataset: Optional[str] = None
    image_size: Optional[int] = None
    channels: Optional[int] = None
    layers: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    steps_in_epoch: Optional[int] = None


class SearchEpoch(RunRecord):
    """One search epoch (``metrics.jsonl``/``metrics.csv``); ``epoch`` counts from 0."""

    epoch: int
    lr: float
    temperature: Optional[float] = None
    arch_updates: bool
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    entropy_normal: float
    entropy_reduce: Optional[float] = None  # None: the space has one cell type (NAS-Bench-201)
    entropy_regulariser: Optional[float] = None
    skip_normal: int
    skip_reduce: Optional[int] = None
    images_per_s: Optional[float] = None
    epoch_seconds: float
    elapsed_seconds: float
    genotype: dict
    edge_margin_median: Optional[float] = None  # models/decisiveness.py
    node_margin_median: Optional[float] = None
    # hardware-aware search (``cost:`` section): expected cost E, the derived network's predicted cost,
    # the penalty factor (weight * f(E / target)); units of cost_metric (ms, M MACs, M params)
    cost_metric: Optional[str] = None
    cost_target: Optional[float] = None
    cost_expected: Optional[float] = None
    cost_derived: Optional[float] = None
    cost_penalty: Optional[float] = None

    def dump(self) -> dict:
        data = super().dump()
        if self.cost_metric is None:  # no cost section: no empty cost columns in metrics.csv
            for key in [k for k in data if k.startswith("cost_")]:
                del data[key]
        return data


class AlphaEpoch(RunRecord):
    """Architecture weights after one search epoch (``alphas.jsonl``): raw, softmaxed, edge weights."""

    epoch: int
    ops: list[str]
    alpha_normal: list[list[float]]
    alpha_reduce: Optional[list[list[float]]] = None  # None: one cell type (NAS-Bench-201)
    weights_normal: list[list[float]]
    weights_reduce: Optional[list[list[float]]] = None
    edge_normal: Optional[list[float]] = None
    edge_reduce: Optional[list[float]] = None
    cell: str = "darts"

    @staticmethod
    def csv_rows(row: dict) -> list[dict]:
        """``alphas.csv`` in long form: one line per (epoch, cell, edge, op) with alpha, its softmax
        weight and the edge's DCSS weight (empty without DCSS)."""
        lines = []
        for cell in ("normal", "reduce"):
            if row.get(f"alpha_{cell}") is None:
                continue
            edges = row.get(f"edge_{cell}")
            for edge, (alphas, weights) in enumerate(zip(row[f"alpha_{cell}"], row[f"weights_{cell}"])):
                for op, alpha, weight in zip(row["ops"], alphas, weights):
                    lines.append({"epoch": row["epoch"], "cell": cell, "edge": edge, "op": op, "alpha": alpha,
                                  "weight": weight, "edge_weight": None if edges is None else edges[edge]})
        return lines


class Decision(BaseModel):
    """One decision of perturbation selection (``engines/derive.py``)."""

    model_config = ConfigDict(extra="allow")

    step: int
    kind: Literal["op", "edge"]
    cell: str
    edge: Optional[int] = None
    node: Optional[int] = None
    candidates: list[str]
    accuracies: list[float]  # supernet validation accuracy (%) with each candidate removed
    losses: list[float] = []  # and its validation loss (breaks ties of accuracy)
    chosen: str  # kind op: the op kept; kind edge: the edge dropped
    margin: float  # accuracy points between this decision's candidate and the runner-up


class DeriveResult(RunFile):
    """``derive.json``: how the perturbation genotype was chosen, decision by decision."""

    FILE: ClassVar[str] = "derive.json"

    method: Literal["perturbation"] = "perturbation"
    genotype: AnyGenotype
    val_images: int
    finetune_epochs: int
    seconds: float
    margin_median: Optional[float] = None  # median accuracy points separating an op decision from its runner-up
    decisions: list[Decision]


def restore_genotype_files(run_dir: Path) -> list[str]:
    """A finished search resumed: write its ``genotype.json`` (and each selection method's file, with
    ``derive.both``) again from ``summary.json`` where deleted; the names written. (The resume named a missing file,
    and the ``evaluate`` it printed failed.) A file there is left as it is, even one that cannot be read: it may be
    the user's edit."""
    from ..models.genotypes import save_genotype

    summary = SearchSummary.read(run_dir)
    files = {"genotype.json": summary.genotype}
    files.update({f"genotype-{method}.json": cell for method, cell in (summary.genotypes or {}).items()})
    written = []
    for name, cell in files.items():
        if not (Path(run_dir) / name).exists():
            save_genotype(cell, Path(run_dir) / name)
            written.append(name)
    return written


def search_finished(folder: Path) -> bool:
    """True when ``folder`` holds a search whose ``summary.json`` says it finished (the one test for it)."""
    try:
        return SearchSummary.read(folder).finished
    except RunFolderError:
        return False


def search_run_of(genotype: object, cell: Optional[AnyGenotype] = None) -> Optional[Path]:
    """The finished search run a GENOTYPE argument names: the run folder itself, or a genotype file in it
    (``genotype.json``, ``genotype-perturbation.json``); ``None`` for anything else (a zoo name, an arch string,
    a file elsewhere), and, given the loaded ``cell``, where it is none of the cells the search derived (its file
    was edited: the search's cost would be credited to another cell)."""
    path = Path(str(genotype))
    try:
        folder = path if path.is_dir() else path.parent if path.is_file() and path.suffix == ".json" else None
    except OSError:
        return None
    if folder is None or not search_finished(folder):
        return None
    if cell is not None and not _same_cell(cell, searched_cells(folder)):
        return None
    return folder


def searched_cells(folder: Path) -> list[AnyGenotype]:
    """Every cell a finished search derived: its summary's, each method's, and perturbation selection's."""
    summary = SearchSummary.read(folder)
    cells = [summary.genotype, *(summary.genotypes or {}).values()]
    if DeriveResult.exists(folder):
        try:
            cells.append(DeriveResult.read(folder).genotype)
        except RunFolderError:
            pass
    return cells


def _same_cell(cell: AnyGenotype, cells: list[AnyGenotype]) -> bool:
    def plain(g) -> dict:
        return g.model_dump(exclude={"name"})

    return any(type(c) is type(cell) and plain(c) == plain(cell) for c in cells)


def check_summary(folder: Path) -> None:
    """Before a search is resumed: a ``summary.json`` that exists but cannot be read (damaged, or edited by hand)
    is a :class:`RunFolderError`. The search wrote it at its end, so a resume would write it again over what may
    be the user's; they move it away first."""
    if SearchSummary.exists(folder):
        try:
            SearchSummary.read(folder)
        except RunFolderError as error:
            raise RunFolderError(
                f"{error}; this search finished, but its summary is damaged: to write it again from the last "
                f"checkpoint, move {SearchSummary.path(folder)} away and resume again") from None


# ---------------------------------------------------------------------------
# An evaluation run
# ---------------------------------------------------------------------------


class EvalEpoch(RunRecord):
    """One training epoch of ``eldarts evaluate``; ``epoch`` counts from 1. Test figures on test epochs only."""

    epoch: int
    lr: float
    drop_path: float
    train_loss: float
    train_top1: float
    images_per_s: float
    epoch_time_s: float
    test_loss: Optional[float] = None
    test_top1: Optional[float] = None
    test_top5: Optional[float] = None


class SearchOrigin(RunFile):
    """The search run an evaluation's cell came from (GENOTYPE given as its folder or its ``genotype.json``): its
    measured cost and op count, for the evaluation's Table 1 row. Written when the evaluation starts."""

    FILE: ClassVar[str] = "search-origin.json"

    folder: str
    search_cost_days: Amount
    search_cost_unit: str
    num_ops: Optional[int] = None
    dataset: Optional[str] = None  # the search's data (its recipe's data.dataset)
    # where the search was not the paper's (fewer epochs, a smaller supernet, part of its images): its cost is of that
    differences: list[str] = []
    # the search's data beyond its name: an image folder's classes and training images (CIFAR-10 as image files?)
    classes: Optional[list[str]] = None
    train_split_images: Optional[int] = None


class EvalResults(RunFile):
    FILE: ClassVar[str] = "results.json"

    completed: bool = True
    name: str
    genotype: str
    genotype_cells: dict
    dataset: str
    network: str
    channels: int
    layers: int
    input_size: list[int]
    num_classes: int
    test_top1_error: Optional[Percent] = None
    test_top5_error: Optional[Percent] = None  # None with 5 classes or fewer (every image in the top 5)
    params_m: Amount  # (to 4 decimals: params is the exact count)
    params: Optional[int] = None
    params_with_aux_m: Optional[Amount] = None
    macs_m: Amount
    macs_conv_fc_m: Optional[Amount] = None
    macs_convention: Optional[str] = None
    epochs: int
    wall_time_s: Amount
    device: str
    world_size: int = 1
    amp: Optional[str] = None
    channels_last: Optional[bool] = None
    table: Optional[Literal["cifar10", "imagenet", "nb201"]] = None
    ema_test_top1_error: Optional[Percent] = None
    ema_test_top5_error: Optional[Percent] = None
    mobile_limit_m: Optional[float] = None
    exceeds_mobile_limit: Optional[bool] = None
    weights: Optional[str] = None
    onnx: Optional[str] = None
    run_time_s: Optional[float] = None  # the command's wall time (setup and tests too), over every invocation
    # the search that found the cell, where the genotype was given as its run folder (``search-origin.json``)
    search_run: Optional[str] = None
    search_cost_days: Optional[Amount] = None
    search_cost_unit: Optional[str] = None
    search_num_ops: Optional[int] = None
    search_dataset: Optional[str] = None
    search_differences: Optional[list[str]] = None  # where that search was not the paper's (SearchOrigin)
    search_classes: Optional[list[str]] = None
    search_train_split_images: Optional[int] = None
    # the test images scored, and the input the network was trained on: pixels in [0, 1], minus the mean, over
    # the std, per channel (the training images' own statistics; timm's ImageNet ones for streamed trees)
    test_images: Optional[int] = None
    train_images: Optional[int] = None  # the training images it was trained on (data.limit applied)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = None
    # the splits' images before data.limit (a run on part of its data says so in its Table row), and the classes
    # in the order of the network's outputs (an image folder's class folders, sorted)
    train_split_images: Optional[int] = None
    test_split_images: Optional[int] = None
    classes: Optional[list[str]] = None

    @property
    def is_imagenet(self) -> bool:
        return self.table == "imagenet" or self.network == "imagenet" or "imagenet" in self.dataset.lower()


# ---------------------------------------------------------------------------
# An ablation
# ---------------------------------------------------------------------------

RunStatus = Literal["pending", "running", "partial", "failed", "finished"]


class AblationRun(BaseModel):
    """One (row, seed) search of an ablation."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    row: str
    seed: int
    A: bool
    B: bool
    C: bool
    status: RunStatus
    error: Optional[str] = None
    started: Optional[str] = None
    ended: Optional[str] = None
    sweep_value: Optional[float] = None
    device: Optional[str] = None
    host: Optional[str] = None
    shard: Optional[str] = None


class AblationRunRecord(RunFile):
    """What the process that ran (or runs) one search of an ablation said about it, in the run's own folder.

    Written only by the holder of the run's claim (``runs.ablation``); the run's status is not taken from
    here but from the folder itself (``summary.json``, ``checkpoint.pt``, ``error.txt``, the claim).
    """

    FILE: ClassVar[str] = "ablation-run.json"

    id: str
    outcome: Literal["running", "finished", "failed", "interrupted"]
    error: Optional[str] = None
    started: Optional[str] = None
    ended: Optional[str] = None
    device: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    worker_pid: Optional[int] = None
    shard: Optional[str] = None


class AblationState(RunFile):
    FILE: ClassVar[str] = "ablation.json"

    kind: Literal["ablation"] = "ablation"
    name: str = "ablation"
    recipe: Optional[str] = None
    b_off: str = "pc-darts"
    evaluated: bool = False
    rows: list[str]
    seeds: list[int] = []
    started: Optional[str] = None
    updated: Optional[str] = None
    finished: Optional[bool] = None
    sweep: Optional[str] = None  # the swept cost setting (cost.target, cost.weight); runs carry sweep_value
    runs: list[AblationRun]


#: A run's own files, given where another file was meant (a genotype, an op profile): what each one is.
RUN_FILE_KINDS: dict[str, tuple[type[RunFile], str]] = {
    SearchSummary.FILE: (SearchSummary, "a search's summary"),
    DeriveResult.FILE: (DeriveResult, "a search's perturbation-selection record"),
    EvalResults.FILE: (EvalResults, "an evaluation's results"),
    AblationState.FILE: (AblationState, "an ablation's state"),
}


def run_file_kind(path: Path) -> Optional[str]:
    """What ``path`` is, if it is one of a run's own files (by its name and contents), else ``None``."""
    known = RUN_FILE_KINDS.get(path.name)
    if known is None:
        return None
    model, what = known
    try:
        model.model_validate(read_json(path))
    except (OSError, ValueError):  # not that file (another so named, or damaged): its own error stands
        return None
    return what
