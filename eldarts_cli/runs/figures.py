"""The paper's figures and tables from run folders (``eldarts report``).

* Figure 3: heatmaps of the final architecture weights ``softmax(alpha)`` of
  each cell type, edges x ops (``alphas.jsonl``, last epoch).
* Figure 4: the derived normal and reduction cells drawn as graphs (inputs
  ``c_{k-2}``, ``c_{k-1}`` green, intermediate nodes blue, output ``c_k``
  yellow, edges labelled with their op), laid out here with matplotlib only.
  A search's cells carry each edge's margin (chosen op minus runner-up,
  ``models/decisiveness.py``) in the label and as line width: thin lines are
  choices the search barely made. A NAS-Bench-201 cell is drawn as its
  input, three nodes and six edges (``none`` edges dotted).
* Curves over search epochs: alpha entropy, skip-connect count, accuracy and
  the temperature ``T(t)`` of eq. 8.
* The tables of :mod:`eldarts_cli.runs.tables` as Markdown beside the figures.
* Hardware-aware search: the expected and derived cost per epoch (in the
  curves), and for an ablation or cost sweep, accuracy against the derived
  networks' cost with the Pareto front marked.

Library code: returns paths, renders nothing to the terminal.
Figures are built on ``matplotlib.figure.Figure`` (no pyplot, no global
backend state) and written atomically as PNG and SVG.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ..core.errors import GenotypeError, RunFolderError
from ..core.io import quiet_matplotlib_config, text_bytes
from ..models.cells import edge_index, state_name
from ..models.genotypes import AnyGenotype, genotype_from_dict, load_genotype
from ..models.nb201 import NB201Genotype, nb201_edges
from .ablation import read_ablation
from .files import AblationState, AlphaEpoch, EvalEpoch, EvalResults, SearchEpoch, SearchSummary
from .folders import (
    ReportFiles, check_report_folder, check_report_targets, make_report_folder, read_metrics, require_kind, run_recipe,
)
from .tables import (
    NB201_COLUMNS, TABLE1_COLUMNS, ablation_table, accuracy_cost_points, evaluation_table, markdown_table, nb201_rows,
    table1_rows, write_table3,
)

FIGURES = "figures"
FORMATS = ("png", "svg")

# Figure 4's colours.
INPUT_COLOUR = "#b5e3a8"  # green: c_{k-2}, c_{k-1}
NODE_COLOUR = "#a9cbee"  # blue: intermediate nodes
OUTPUT_COLOUR = "#f7e08a"  # yellow: c_k


# ---------------------------------------------------------------------------
# Figure helpers
# ---------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    quiet_matplotlib_config()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    paths = []
    files = ReportFiles(stem.parent)
    for fmt in formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, bbox_inches="tight")
        path = stem.with_suffix(f".{fmt}")
        files.write(path, buffer.getvalue())
        paths.append(path)
    return paths


def _write_table(path: Path, text: str) -> Path:
    ReportFiles(path.parent).write(path, text_bytes(text))
    return path


#: The figures report draws into ``figures/`` (in each of ``FORMATS``), besides the cells' (``REPORT_CELL``).
REPORT_STEMS = {"alpha_cell", "alpha_normal", "alpha_reduce", "curves", "ablation_error", "accuracy_cost"}
#: The cells' figures: ``cell`` (NAS-Bench-201), ``cell_normal``/``cell_reduce``, and another selection's.
REPORT_CELL = re.compile(r"cell(_[a-z]+)?(_normal|_reduce)?")
REPORT_TABLES = {"table1.md", "table2.md", "table_nb201.md"}


def report_name(name: str) -> bool:
    """Whether report writes (or removes) a file of this name in ``figures/`` (a backup such as ``curves.v1.png``
    or notes such as ``cell_notes.txt`` are not its names)."""
    stem, dot, fmt = name.rpartition(".")
    return name in REPORT_TABLES or (bool(dot) and fmt in FORMATS and (stem in REPORT_STEMS
                                                                       or REPORT_CELL.fullmatch(stem) is not None))


def check_figures_ours(run_dir: Path) -> None:
    """What :func:`_report_folder` refuses, asked without writing anything (``report RUN1 RUN2`` asks it of every
    run before drawing any)."""
    check_report_folder(run_dir, FIGURES)
    if (Path(run_dir) / FIGURES).is_dir():
        ReportFiles(Path(run_dir) / FIGURES).check(report_name)


def _report_folder(run_dir: Path) -> Path:
    """``<run>/figures/``, made if missing, after checking that no file report may write there is another's."""
    out = make_report_folder(run_dir, FIGURES)
    ReportFiles(out).check(report_name)
    return out


def edge_labels(nodes: int) -> list[str]:
    """``e3: c_{k-1}->1`` for every row of an alpha matrix (DARTS' edge order)."""
    return [f"e{i}: {state_name(source)}→{node}" for i, (node, source) in enumerate(edge_index(nodes))]


def nb201_edge_labels(rows: int) -> list[str]:
    """``e2: 1→2`` for every row of a NAS-Bench-201 alpha matrix (nodes from 1, as in the arch string)."""
    nodes = int((math.isqrt(8 * rows + 1) - 1) // 2)  # rows = nodes (nodes + 1) / 2
    if nodes * (nodes + 1) // 2 != rows:
        return [f"e{i}" for i in range(rows)]
    return [f"e{i}: {source}→{node}" for i, (node, source) in enumerate(nb201_edges(nodes))]


def plot_alpha_heatmap(weights: Sequence[Sequence[float]], ops: Sequence[str], title: str, stem: Path,
                       cell: str = "darts") -> list[Path]:
    """Figure 3: edges (rows) x ops (columns); darker is a larger weight."""
    rows = len(weights)
    nodes = int((math.isqrt(8 * rows + 9) - 3) // 2)  # rows = nodes (nodes + 3) / 2
    if cell == "nb201":
        labels = nb201_edge_labels(rows)
    else:
        labels = edge_labels(nodes) if nodes * (nodes + 3) // 2 == rows else [f"e{i}" for i in range(rows)]
    figure = _new_figure(1.3 * len(ops) + 2.6, 0.32 * rows + 1.6)
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="Blues", aspect="auto")
    axes.set_xticks(range(len(ops)), list(ops), rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(rows), labels, fontsize=7)
    axes.set_xlabel("Operations")
    axes.set_ylabel("Edges")
    axes.set_title(title, fontsize=10)
    low, high = image.get_clim()
    if len(ops) <= 10:
        for i, row in enumerate(weights):
            for j, value in enumerate(row):
                axes.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6,
                          color="white" if value > low + 0.6 * (high - low) else "#222222")
    figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
    return _save(figure, stem)


def _cell_layout(nodes: int) -> dict[int, tuple[float, float]]:
    """Inputs left, nodes in a zigzag left to right, output right (Figure 4)."""
    spots = {0: (0.0, 1.1), 1: (0.0, -1.1)}
    for node in range(nodes):
        spots[node + 2] = (1.9 + 1.7 * node, 0.75 if node % 2 == 0 else -0.75)
    spots[-1] = (1.9 + 1.7 * nodes + 0.4, 0.0)
    return spots


def _margin_width(margin: Optional[float]) -> float:
    """Line width of an edge: 0.6 for a tied choice up to 3.0 for a margin of 0.5 or more."""
    return 1.0 if margin is None else 0.6 + 4.8 * min(max(margin, 0.0), 0.5)


def _edge_text(op: str, margin: Optional[float]) -> str:
    return op if margin is None else f"{op}\n+{margin:.3f}"


def plot_cell(edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str, stem: Path,
              margins: Optional[Sequence[float]] = None) -> list[Path]:
    """Figure 4: one discrete cell as a DAG, edges labelled with their op (and margin, if given)."""
    nodes = len(edges) // 2
    spots = _cell_layout(nodes)
    xs = [x for x, _ in spots.values()]
    figure = _new_figure(1.25 * (max(xs) - min(xs)) + 2.0, 3.4)
    axes = figure.add_subplot()
    axes.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    axes.set_ylim(-1.8, 1.8)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title(title, fontsize=10)

    def box(state: int, text: str, colour: str) -> None:
        x, y = spots[state]
        axes.text(x, y, text, ha="center", va="center", fontsize=9, zorder=3,
                  bbox=dict(boxstyle="round,pad=0.35", facecolor=colour, edgecolor="#444444"))

    box(0, "c_{k-2}", INPUT_COLOUR)
    box(1, "c_{k-1}", INPUT_COLOUR)
    for node in range(nodes):
        box(node + 2, str(node), NODE_COLOUR)
    box(-1, "c_{k}", OUTPUT_COLOUR)

    def arrow(a: int, b: int, rad: float, colour: str, style: str = "-", width: float = 1.0) -> tuple[float, float]:
        return _arrow(axes, spots[a], spots[b], rad, colour, style, width)

    for position, (op, source) in enumerate(edges):
        target = position // 2 + 2
        span = abs(spots[target][0] - spots[source][0])
        rad = 0.0 if span < 2.5 else (0.22 if position % 2 else -0.22)
        margin = margins[position] if margins is not None and position < len(margins) else None
        mx, my = arrow(source, target, rad, "#222222", width=_margin_width(margin))
        axes.text(mx, my, _edge_text(op, margin), ha="center", va="center", fontsize=6.5, zorder=2,
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    for state in concat:
        arrow(state, -1, 0.0 if state == nodes + 1 else 0.12, "#888888", "--")
    return _save(figure, stem)


def _arrow(axes, start: tuple[float, float], end: tuple[float, float], rad: float, colour: str, style: str = "-",
           width: float = 1.0) -> tuple[float, float]:
    """An arrow between two boxes; returns the midpoint of its arc (where the label goes)."""
    from matplotlib.patches import FancyArrowPatch

    (x1, y1), (x2, y2) = start, end
    axes.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=10, shrinkA=13,
                                   shrinkB=13, connectionstyle=f"arc3,rad={rad}", color=colour,
                                   linestyle=style, linewidth=width, zorder=1))
    # Midpoint of matplotlib's arc3 quadratic Bezier (equal aspect, data units).
    return (x1 + x2) / 2 + rad * (y2 - y1) / 2, (y1 + y2) / 2 - rad * (x2 - x1) / 2


def plot_nb201_cell(genotype: NB201Genotype, title: str, stem: Path,
                    margins: Optional[Sequence[float]] = None) -> list[Path]:
    """A NAS-Bench-201 cell: input, three nodes in a row, every edge labelled (``none`` dotted, grey)."""
    cells = genotype.cells
    nodes = len(cells)
    spots = {state: (2.2 * state, 0.0) for state in range(nodes + 1)}
    figure = _new_figure(2.6 * nodes + 2.0, 3.6)
    axes = figure.add_subplot()
    axes.set_xlim(-0.8, 2.2 * nodes + 0.8)
    axes.set_ylim(-2.0, 2.0)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title(title + f"\n{genotype.arch}", fontsize=8)
    for state, (x, y) in spots.items():
        label = "input" if state == 0 else (f"node {state}\n(output)" if state == nodes else f"node {state}")
        colour = INPUT_COLOUR if state == 0 else (OUTPUT_COLOUR if state == nodes else NODE_COLOUR)
        axes.text(x, y, label, ha="center", va="center", fontsize=8, zorder=3,
                  bbox=dict(boxstyle="round,pad=0.35", facecolor=colour, edgecolor="#444444"))
    position = 0
    for node, edges in enumerate(cells, start=1):
        for op, source in edges:
            span = node - source
            rad = 0.0 if span == 1 else (-0.45 if span == 2 else 0.45)
            margin = margins[position] if margins is not None and position < len(margins) else None
            none = op == "none"
            mx, my = _arrow(axes, spots[source], spots[node], rad, "#aaaaaa" if none else "#222222",
                            ":" if none else "-", _margin_width(margin))
            axes.text(mx, my, _edge_text(op, margin), ha="center", va="center", fontsize=6.5, zorder=2,
                      color="#888888" if none else "#000000",
                      bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
            position += 1
    return _save(figure, stem)


def plot_search_curves(rows: Sequence[dict], ops_count: Optional[int], stem: Path,
                       threshold: Optional[float] = None) -> list[Path]:
    """Entropy, skip-connect count, accuracy, T(t) and the median margins per search epoch; with a
    ``cost:`` section, the expected and derived cost against the target below them."""
    epochs = [r["epoch"] + 1 for r in rows]
    with_cost = any(r.get("cost_expected") is not None for r in rows)
    figure = _new_figure(13.0, 8.6 if with_cost else 6.0)
    layout = figure.add_gridspec(3 if with_cost else 2, 3)
    grid = [[figure.add_subplot(layout[r, c]) for c in range(3)] for r in range(2)]
    cost_ax = figure.add_subplot(layout[2, :]) if with_cost else None
    warm = [r["epoch"] + 1 for r in rows if not r.get("arch_updates", True)]

    def shade(axes) -> None:
        if warm:
            axes.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="#eeeeee", zorder=0, label="warm-up")

    def series(axes, keys: Sequence[tuple[str, str]], scale: float = 1.0, step: bool = False) -> None:
        for key, label in keys:
            values = [r.get(key) for r in rows]
            if all(v is None for v in values):
                continue
            values = [None if v is None else v * scale for v in values]
            if step:
                axes.step(epochs, values, where="mid", marker="o", markersize=3, label=label)
            else:
                axes.plot(epochs, values, marker="o", markersize=3, label=label)

    ax = grid[0][0]
    shade(ax)
    series(ax, [("entropy_normal", "normal"), ("entropy_reduce", "reduce")])
    if ops_count:
        ax.axhline(math.log(ops_count), color="#999999", linestyle=":", linewidth=1, label="uniform")
    ax.set_title("mean edge entropy of softmax(α) (nats)", fontsize=9)
    ax = grid[0][1]
    shade(ax)
    series(ax, [("skip_normal", "normal"), ("skip_reduce", "reduce")], step=True)
    ax.set_title("skip_connect edges in the derived cell", fontsize=9)
    ax = grid[1][0]
    shade(ax)
    series(ax, [("val_acc", "val (arch half)"), ("train_acc", "train")], scale=100)
    ax.set_title("accuracy (%)", fontsize=9)
    ax = grid[1][1]
    shade(ax)
    if any(r.get("temperature") is not None for r in rows):
        series(ax, [("temperature", "T(t)")])
        ax.set_title("temperature T(t) = max(T_min, T_init·β^t)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "entropy regularisation off", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_title("temperature T(t)", fontsize=9)
    ax = grid[0][2]
    shade(ax)
    series(ax, [("edge_margin_median", "op: chosen − runner-up"), ("node_margin_median", "node: kept − dropped")])
    if threshold is not None:
        ax.axhline(threshold, color="#c44e52", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_title("median margins of the derived cell", fontsize=9)
    grid[1][2].axis("off")
    from matplotlib.ticker import MaxNLocator

    panels = [grid[0][0], grid[0][1], grid[1][0], grid[1][1], grid[0][2]]
    if with_cost:
        from ..models.cost import UNITS

        shade(cost_ax)
        series(cost_ax, [("cost_expected", "expected E"), ("cost_derived", "derived network (predicted)")])
        last = rows[-1]
        metric, target = last.get("cost_metric"), last.get("cost_target")
        if target is not None:
            cost_ax.axhline(target, color="#c44e52", linestyle="--", linewidth=1, label="target")
        cost_ax.set_title(f"{metric} of the evaluation network ({UNITS.get(metric, '')})", fontsize=9)
        cost_ax.set_xlabel("epoch")
        panels.append(cost_ax)
    for ax in panels:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax is grid[0][1]:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    for ax in grid[1][:2]:
        ax.set_xlabel("epoch")
    grid[0][2].set_xlabel("epoch")
    figure.tight_layout()
    return _save(figure, stem)


def plot_genotype(genotype: AnyGenotype, folder: Path, prefix: str = "cell",
                  margins: Optional[dict[str, list[float]]] = None) -> list[Path]:
    """The cells of ``genotype`` (``margins``: per cell type, one per edge, from ``Margins.edges``)."""
    margins = margins or {}
    if isinstance(genotype, NB201Genotype):
        return plot_nb201_cell(genotype, "NAS-Bench-201 cell", folder / prefix, margins.get("cell"))
    paths = plot_cell(genotype.normal, genotype.normal_concat, "Normal cell", folder / f"{prefix}_normal",
                      margins.get("normal"))
    paths += plot_cell(genotype.reduce, genotype.reduce_concat, "Reduction cell", folder / f"{prefix}_reduce",
                       margins.get("reduce"))
    return paths


# ---------------------------------------------------------------------------
# A search run
# ---------------------------------------------------------------------------


def figures_drawn(run_dir: Path) -> bool:
    """Whether a search's or an evaluation's figures were all drawn (both reports write their table last)."""
    return any((Path(run_dir) / FIGURES / name).exists() for name in ("table1.md", "table2.md", "table_nb201.md"))


def _not_drawn(out: Path, stems: Sequence[str], why: str) -> None:
    """Say why figures are missing, and remove an earlier report's files of those names from ``out`` (eldarts'
    own report folder), so that no stale figure stands beside the new ones."""
    warnings.warn(why, stacklevel=3)
    if not out.is_dir():  # (an ablation's figures/ is made for its first chart)
        return
    files = ReportFiles(out)
    for stem in stems:
        for fmt in FORMATS:
            files.remove(out / f"{stem}.{fmt}")  # (one eldarts did not write stays)


def _no_epoch(log: Path) -> str:
    """Why a log gave no rows: it is missing, or no line of it is whole (cut by a kill or a full disk)."""
    return f"{log} is missing" if not log.exists() else f"{log} holds no complete epoch"


def _epochs(run_dir: Path, model: type[SearchEpoch] | type[EvalEpoch]) -> list[dict]:
    """``metrics.jsonl``'s rows, each checked against the run's record model before any is drawn: a value of the
    wrong type (``"epoch": "x"``, a list for an accuracy) is one error naming the file and field, where it was a
    traceback from the plot."""
    return [row.dump() for row in read_metrics(run_dir, model=model)]


def check_search_logs(run_dir: Path) -> None:
    """What :func:`write_search_report` refuses of a search's files, read without writing anything (``report RUN1
    RUN2`` asks it of every run before drawing any: a damaged log of the second came after the first's figures)."""
    SearchSummary.read(run_dir)
    read_metrics(run_dir, "alphas", model=AlphaEpoch)
    _epochs(run_dir, SearchEpoch)


def write_search_report(run_dir: Path) -> list[Path]:
    """Figures 3 and 4 and the search curves of a finished search, into ``<run>/figures/``."""
    run_dir = Path(run_dir)
    require_kind(run_dir, "search")
    check_report_targets(run_dir, [FIGURES])
    summary = SearchSummary.read(run_dir)  # before anything is written: a folder of another tool is left as it is
    alphas = read_metrics(run_dir, "alphas", model=AlphaEpoch)
    rows = _epochs(run_dir, SearchEpoch)
    out = _report_folder(run_dir)
    paths: list[Path] = []
    ops_count = None
    if not alphas:
        _not_drawn(out, ["alpha_cell", "alpha_normal", "alpha_reduce"],
                   f"{_no_epoch(run_dir / 'alphas.jsonl')}: Figure 3's heatmaps are not drawn")
    if alphas:
        last = alphas[-1]
        ops_count = len(last.ops)
        epoch = last.epoch + 1
        if last.weights_reduce is None:  # one cell type (NAS-Bench-201)
            paths += plot_alpha_heatmap(last.weights_normal, last.ops, f"Cell softmax(α) (epoch {epoch})",
                                        out / "alpha_cell", cell=last.cell)
        else:
            paths += plot_alpha_heatmap(last.weights_normal, last.ops, f"Normal cell softmax(α) (epoch {epoch})",
                                        out / "alpha_normal")
            paths += plot_alpha_heatmap(last.weights_reduce, last.ops, f"Reduction cell softmax(α) (epoch {epoch})",
                                        out / "alpha_reduce")
    magnitude = (summary.genotypes or {}).get("magnitude", summary.genotype)
    margins = summary.margins.edges if summary.margins is not None else None
    paths += plot_genotype(magnitude, out, margins=margins)  # the cell the margins belong to
    for method, genotype in (summary.genotypes or {}).items():
        if method != "magnitude":
            paths += plot_genotype(genotype, out, prefix=f"cell_{method}")
    for name, found in (("metrics", {r.get("epoch") for r in rows}), ("alphas", {r.epoch for r in alphas})):
        missing = [e + 1 for e in range(summary.epochs) if e not in found]
        if rows and alphas and missing:  # (a line cut by a kill or a full disk is passed over when read)
            warnings.warn(f"{run_dir / (name + '.jsonl')} lacks epoch{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} of the "
                          f"search's {summary.epochs} (a line cut by a kill or a full disk, or edited): the figures "
                          "go without them", stacklevel=2)
    if rows:
        threshold = summary.margins.threshold if summary.margins is not None else None
        paths += plot_search_curves(rows, ops_count, out / "curves", threshold)
    else:
        _not_drawn(out, ["curves"], f"{_no_epoch(run_dir / 'metrics.jsonl')}: the search curves are not drawn")
    if summary.cell == "nb201":
        paths.append(_write_table(out / "table_nb201.md",
                                  markdown_table(NB201_COLUMNS, nb201_rows(search_runs=[run_dir]))))
    else:
        paths.append(_write_table(out / "table1.md", markdown_table(TABLE1_COLUMNS, table1_rows([run_dir]))))
    return paths


# ---------------------------------------------------------------------------
# An evaluation run
# ---------------------------------------------------------------------------

def _loss_labels(run_dir: Path) -> dict[str, str]:
    """The training loss's legend where it holds the auxiliary head's term (the test loss is the main head's
    cross-entropy alone, so the two read as one quantity on one axis)."""
    network = run_recipe(Path(run_dir)).get("network")
    if isinstance(network, dict) and network.get("auxiliary") and network.get("auxiliary_weight"):
        return {"train_loss": f"train_loss (+ {network['auxiliary_weight']:g} x auxiliary head's)"}
    return {}


def plot_training_curves(rows: Sequence[dict], stem: Path, labels: Optional[dict[str, str]] = None) -> list[Path]:
    """Loss and accuracy per evaluation epoch: every numeric ``*loss*`` and ``*acc*``/``*top1*``/``*top5*`` column
    (``labels``: a column's legend where its name alone misleads)."""
    labels = labels or {}
    first = rows[0].get("epoch", 0)
    offset = 0 if isinstance(first, int) and first >= 1 else 1  # evaluate logs epochs from 1, search from 0
    epochs = [r.get("epoch", i) + offset for i, r in enumerate(rows)]
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool)]
    figure = _new_figure(9.0, 3.4)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for key in keys:
        values = [r.get(key) for r in rows]
        values = [float("nan") if v is None else float(v) for v in values]
        if "loss" in key:
            loss_ax.plot(epochs, values, marker="o", markersize=2, label=labels.get(key, key))
        elif any(word in key for word in ("acc", "top1", "top5")):
            finite = [v for v in values if v == v]
            scale = 100.0 if finite and max(finite) <= 1 else 1.0
            acc_ax.plot(epochs, [v * scale for v in values], marker="o", markersize=2, label=key)
    loss_ax.set_title("loss", fontsize=9)
    acc_ax.set_title("accuracy (%)", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return _save(figure, stem)


def write_eval_report(run_dir: Path) -> list[Path]:
    """Training curves and the evaluated cells of a finished evaluation, into ``<run>/figures/``."""
    run_dir = Path(run_dir)
    require_kind(run_dir, "evaluation")
    check_report_targets(run_dir, [FIGURES])
    results = EvalResults.read(run_dir)  # before anything is written: a folder of another tool is left as it is
    rows = _epochs(run_dir, EvalEpoch)
    out = _report_folder(run_dir)
    paths: list[Path] = []
    if rows:
        paths += plot_training_curves(rows, out / "curves", labels=_loss_labels(run_dir))
    else:
        _not_drawn(out, ["curves"], f"{_no_epoch(run_dir / 'metrics.jsonl')}: the training curves are not drawn")
    genotype: Optional[AnyGenotype] = None
    if (run_dir / "genotype.json").exists():
        genotype = load_genotype(run_dir / "genotype.json")
    else:  # (moved away or lost: results.json holds the cells too)
        try:
            genotype = genotype_from_dict(results.genotype_cells, "genotype_cells")
        except GenotypeError as error:
            _not_drawn(out, ["cell", "cell_normal", "cell_reduce"],
                       f"{run_dir / 'genotype.json'} is missing, and the copy of the cells in "
                       f"{EvalResults.path(run_dir)} is not a genotype ({error}): the cell figures are not drawn")
    if genotype is not None:
        paths += plot_genotype(genotype, out)
    title, columns, rows = evaluation_table(results)  # (the title says which table, or which data when none)
    table = out / ("table2.md" if results.is_imagenet else "table_nb201.md" if results.table == "nb201" else "table1.md")
    paths.append(_write_table(table, f"{title}\n\n{markdown_table(columns, rows)}"))
    return paths


# ---------------------------------------------------------------------------
# An ablation
# ---------------------------------------------------------------------------


def plot_ablation(rows: Sequence[dict], stem: Path) -> list[Path]:
    """Error per Table 3 row: measured mean +- std over seeds, published values as crosses."""
    measured = [r for r in rows if not r["published"] and r.get("error_mean") is not None]
    published = {r["label"]: r for r in rows if r["published"]}
    figure = _new_figure(max(4.5, 1.1 * len(measured) + 2), 3.6)
    axes = figure.add_subplot()
    # one bar per measured row: a cost sweep has one row per swept value under the same components' label
    positions = list(range(len(measured)))
    metrics = " / ".join(sorted({r["error_metric"] for r in measured if r.get("error_metric")}))
    axes.bar(positions, [r["error_mean"] for r in measured], color="#4c72b0",
             label=f"measured ({metrics})" if metrics else "measured")
    # error bars where there is a std (several seeds): a row of one seed drew a flat cap, read as std 0
    spread = [(i, r["error_mean"], r["error_std"]) for i, r in enumerate(measured) if r.get("error_std") is not None]
    if spread:
        axes.errorbar([i for i, _, _ in spread], [m for _, m, _ in spread], yerr=[s for _, _, s in spread],
                      fmt="none", ecolor="#333333", capsize=3)
    swept = any(r.get("sweep") for r in measured)
    axes.set_xticks(positions, [r["label"] + (f"\n{r['sweep']}" if r.get("sweep") else "") for r in measured],
                    **({"fontsize": 7} if swept else {}))
    crosses = [(i, published[r["label"]]["error_mean"]) for i, r in enumerate(measured) if r["label"] in published]
    if crosses:
        axes.scatter([i for i, _ in crosses], [v for _, v in crosses], marker="x", color="#c44e52", zorder=3,
                     label="published test error (paper Table 3)")
    axes.set_ylabel("error (%)")
    axes.set_title("Ablation (Table 3)", fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return _save(figure, stem)


def plot_accuracy_cost(points: Sequence[dict], stem: Path) -> list[Path]:
    """Accuracy against the derived network's cost, one point per run, the Pareto front marked
    (hardware-aware search; ``runs.tables.accuracy_cost_points``)."""
    figure = _new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    groups = list(dict.fromkeys(p["group"] for p in points))
    for group in groups:
        mine = [p for p in points if p["group"] == group]
        axes.scatter([p["cost"] for p in mine], [p["accuracy"] for p in mine], s=28, zorder=3, label=group)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["cost"])
    if front:
        axes.step([p["cost"] for p in front], [p["accuracy"] for p in front], where="post", color="#c44e52",
                  linewidth=1.2, zorder=2, label="Pareto front")
        axes.scatter([p["cost"] for p in front], [p["accuracy"] for p in front], s=110, facecolors="none",
                     edgecolors="#c44e52", linewidths=1.2, zorder=4)
    units = sorted({p["unit"] for p in points if p["unit"]})
    measured = all(p["measured"] for p in points)
    axes.set_xlabel(f"cost of the derived network ({' / '.join(units)}, {'measured' if measured else 'measured or predicted'})")
    metrics = sorted({p["accuracy_of"] for p in points})
    axes.set_ylabel(f"{' / '.join(metrics)} (%)")
    axes.set_title("Accuracy against cost (hardware-aware search)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return _save(figure, stem)


def write_ablation_report(folder: Path, *, run_figures: bool = True, chart: bool = True) -> list[Path]:
    """Table 3 (CSV + Markdown), an error bar chart (``chart``), and (``run_figures``) the figures of each
    finished run that lacks them."""
    folder = Path(folder)
    require_kind(folder, "ablation")
    check_report_targets(folder, [FIGURES, "table3.csv", "table3.md"])
    if chart:
        check_report_folder(folder, FIGURES)
    if (folder / FIGURES).is_dir():
        ReportFiles(folder / FIGURES).check(report_name)
    ReportFiles(folder).check(lambda name: name in ("table3.csv", "table3.md"))  # (before anything is written)
    state = read_ablation(folder)
    paths: list[Path] = []
    for run in state.runs if run_figures else ():
        run_dir = folder / run.id
        if run.status == "finished" and not figures_drawn(run_dir):
            try:
                paths += write_search_report(run_dir)
            except RunFolderError as error:  # (the table is drawn all the same; the run's figures are not)
                warnings.warn(f"{run.id}'s figures are not drawn: {error}")
    rows = ablation_table(folder)
    paths += write_table3(folder, rows)
    if not chart:
        return paths
    if any(not r["published"] and r.get("error_mean") is not None for r in rows):
        paths += plot_ablation(rows, make_report_folder(folder, FIGURES) / "ablation_error")
    else:  # (an earlier report's chart, of runs since removed or redone, is not left to stand for this table)
        _not_drawn(folder / FIGURES, ["ablation_error"],
                   f"{folder} has no finished run with an error yet: Table 3's error chart is not drawn")
    points = accuracy_cost_points(folder)
    if points:
        paths += plot_accuracy_cost(points, make_report_folder(folder, FIGURES) / "accuracy_cost")
    elif any((folder / FIGURES / f"accuracy_cost.{fmt}").exists() for fmt in FORMATS):  # (no cost: never drawn)
        _not_drawn(folder / FIGURES, ["accuracy_cost"],
                   f"{folder} has no finished run with a cost of its derived network now: the accuracy-cost chart "
                   "is not drawn")
    return paths
