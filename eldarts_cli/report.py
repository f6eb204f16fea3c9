"""The paper's figures and tables from run folders (``eldarts report``).

* Figure 3: heatmaps of the final architecture weights ``softmax(alpha)`` of
  each cell type, edges x ops (``alphas.jsonl``, last epoch).
* Figure 4: the derived normal and reduction cells drawn as graphs (inputs
  ``c_{k-2}``, ``c_{k-1}`` green, intermediate nodes blue, output ``c_k``
  yellow, edges labelled with their op), laid out here with matplotlib only.
* Curves over search epochs: alpha entropy, skip-connect count, accuracy and
  the temperature ``T(t)`` of eq. 8.
* Tables 1-3: rows measured by this project beside the paper's published rows
  (``published.py``); every row carries ``published`` so a renderer can never
  present a quoted figure as measured.

Library code: returns paths and plain data, renders nothing to the terminal.
Figures are built on ``matplotlib.figure.Figure`` (no pyplot, no global
backend state) and written atomically as PNG and SVG.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from .cells import edge_index
from .errors import RunFolderError
from .genotypes import Genotype, genotype_from_dict
from .runs import atomic_write_bytes, atomic_write_text, read_json, read_metrics

FIGURES = "figures"
FORMATS = ("png", "svg")
FolderKind = Literal["search", "evaluation", "ablation"]

# Figure 4's colours.
INPUT_COLOUR = "#b5e3a8"  # green: c_{k-2}, c_{k-1}
NODE_COLOUR = "#a9cbee"  # blue: intermediate nodes
OUTPUT_COLOUR = "#f7e08a"  # yellow: c_k


# ---------------------------------------------------------------------------
# What a folder holds
# ---------------------------------------------------------------------------


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
    if (folder / "ablation.json").exists():
        return "ablation"
    summary = folder / "summary.json"
    if summary.exists():
        try:
            finished = bool(read_json(summary).get("finished"))
        except (ValueError, OSError, AttributeError):
            finished = False
        if finished:
            return "search"
    if (folder / "results.json").exists():
        return "evaluation"
    started = [name for name in ("recipe.yaml", "checkpoint.pt", "metrics.jsonl") if (folder / name).exists()]
    if started:
        epochs = len(read_metrics(folder))
        is_search = "search" in _recipe_sections(folder) or (folder / "alphas.jsonl").exists()
        what, done, command = (
            ("search", "summary.json", f"eldarts search {folder / 'recipe.yaml'} --resume {folder}")
            if is_search
            else ("evaluation", "results.json", f"eldarts evaluate ... --resume {folder}")
        )
        raise RunFolderError(
            f"{folder} holds a half-written {what} run ({', '.join(started)} present, {epochs} epoch(s) logged, "
            f"no {done}); finish it first"
            + (f": {command}" if "checkpoint.pt" in started else " (it has no checkpoint.pt: start it again)")
        )
    raise RunFolderError(
        f"{folder} holds no run: expected summary.json (a search run), results.json (an evaluation run) "
        f"or ablation.json (an ablation)"
    )


# ---------------------------------------------------------------------------
# Figure helpers
# ---------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    paths = []
    for fmt in formats:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, bbox_inches="tight")
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _state_name(state: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, str(state - 2))


def edge_labels(nodes: int) -> list[str]:
    """``e3: c_{k-1}->1`` for every row of an alpha matrix (DARTS' edge order)."""
    return [f"e{i}: {_state_name(source)}→{node}" for i, (node, source) in enumerate(edge_index(nodes))]


def plot_alpha_heatmap(weights: Sequence[Sequence[float]], ops: Sequence[str], title: str, stem: Path) -> list[Path]:
    """Figure 3: edges (rows) x ops (columns); darker is a larger weight."""
    rows = len(weights)
    nodes = int((math.isqrt(8 * rows + 9) - 3) // 2)  # rows = nodes (nodes + 3) / 2
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


def plot_cell(edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str, stem: Path) -> list[Path]:
    """Figure 4: one discrete cell as a DAG, edges labelled with their op."""
    from matplotlib.patches import FancyArrowPatch

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

    def arrow(a: int, b: int, rad: float, colour: str, style: str = "-") -> tuple[float, float]:
        (x1, y1), (x2, y2) = spots[a], spots[b]
        axes.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=10, shrinkA=13,
                                       shrinkB=13, connectionstyle=f"arc3,rad={rad}", color=colour,
                                       linestyle=style, linewidth=1.0, zorder=1))
        # Midpoint of matplotlib's arc3 quadratic Bezier (equal aspect, data units).
        return (x1 + x2) / 2 + rad * (y2 - y1) / 2, (y1 + y2) / 2 - rad * (x2 - x1) / 2

    for position, (op, source) in enumerate(edges):
        target = position // 2 + 2
        span = abs(spots[target][0] - spots[source][0])
        rad = 0.0 if span < 2.5 else (0.22 if position % 2 else -0.22)
        mx, my = arrow(source, target, rad, "#222222")
        axes.text(mx, my, op, ha="center", va="center", fontsize=6.5, zorder=2,
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    for state in concat:
        arrow(state, -1, 0.0 if state == nodes + 1 else 0.12, "#888888", "--")
    return _save(figure, stem)


def plot_search_curves(rows: Sequence[dict], ops_count: Optional[int], stem: Path) -> list[Path]:
    """Entropy, skip-connect count, accuracy and T(t) per search epoch."""
    epochs = [r["epoch"] + 1 for r in rows]
    figure = _new_figure(9.0, 6.0)
    grid = figure.subplots(2, 2, sharex=True)
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
    from matplotlib.ticker import MaxNLocator

    for ax in (grid[0][0], grid[0][1], grid[1][0], grid[1][1]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax is grid[0][1]:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    for ax in grid[1]:
        ax.set_xlabel("epoch")
    figure.tight_layout()
    return _save(figure, stem)


def plot_genotype(genotype: Genotype, folder: Path, prefix: str = "cell") -> list[Path]:
    paths = plot_cell(genotype.normal, genotype.normal_concat, "Normal cell", folder / f"{prefix}_normal")
    paths += plot_cell(genotype.reduce, genotype.reduce_concat, "Reduction cell", folder / f"{prefix}_reduce")
    return paths


# ---------------------------------------------------------------------------
# A search run
# ---------------------------------------------------------------------------


def _require_kind(folder: Path, kind: FolderKind) -> None:
    found = folder_kind(folder)
    if found != kind:
        raise RunFolderError(f"{folder} holds an {found} run, not a {kind} run" if found[0] in "ae"
                             else f"{folder} holds a {found} run, not a {kind} run")


def write_search_report(run_dir: Path) -> list[Path]:
    """Figures 3 and 4 and the search curves of a finished search, into ``<run>/figures/``."""
    run_dir = Path(run_dir)
    _require_kind(run_dir, "search")
    out = run_dir / FIGURES
    out.mkdir(exist_ok=True)
    paths: list[Path] = []
    alphas = read_metrics(run_dir, "alphas")
    ops_count = None
    if alphas:
        last = alphas[-1]
        ops_count = len(last["ops"])
        epoch = last["epoch"] + 1
        paths += plot_alpha_heatmap(last["weights_normal"], last["ops"], f"Normal cell softmax(α) (epoch {epoch})",
                                    out / "alpha_normal")
        paths += plot_alpha_heatmap(last["weights_reduce"], last["ops"], f"Reduction cell softmax(α) (epoch {epoch})",
                                    out / "alpha_reduce")
    paths += plot_genotype(read_search_genotype(run_dir), out)
    rows = read_metrics(run_dir)
    if rows:
        paths += plot_search_curves(rows, ops_count, out / "curves")
    atomic_write_text(out / "table1.md", markdown_table(TABLE1_COLUMNS, table1_rows([run_dir])))
    paths.append(out / "table1.md")
    return paths


def read_search_genotype(run_dir: Path) -> Genotype:
    summary = read_json(Path(run_dir) / "summary.json")
    return genotype_from_dict(summary["genotype"], str(Path(run_dir) / "summary.json"))


def search_summary(run_dir: Path) -> dict[str, Any]:
    """The numbers of one finished search that tables need (plain data)."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    rows = read_metrics(run_dir)
    last = rows[-1] if rows else {}
    alphas = read_metrics(run_dir, "alphas")
    genotype = genotype_from_dict(summary["genotype"], str(run_dir / "summary.json"))
    val_acc = last.get("val_acc")
    return {
        "folder": str(run_dir),
        "name": summary.get("name"),
        "epochs": summary.get("epochs"),
        "device": summary.get("device"),
        "search_cost_days": summary["search_cost"]["days"],
        "search_cost_unit": summary["search_cost"]["unit"],
        "search_hours": summary["search_cost"]["hours"],
        "val_error": None if val_acc is None else 100.0 * (1.0 - val_acc),
        "skip_normal": genotype.count("skip_connect", reduction=False),
        "skip_reduce": genotype.count("skip_connect", reduction=True),
        "entropy_normal": last.get("entropy_normal"),
        "entropy_reduce": last.get("entropy_reduce"),
        "num_ops": len(alphas[-1]["ops"]) if alphas else None,
        "genotype": genotype,
    }


# ---------------------------------------------------------------------------
# An evaluation run
# ---------------------------------------------------------------------------

#: Keys an evaluation's ``results.json`` may use for each quantity (the first found wins).
_RESULT_KEYS = {
    "top1_error": ("top1_error", "test_error", "test_top1_error", "error_top1", "top1_err"),
    "top5_error": ("top5_error", "test_top5_error", "error_top5", "top5_err"),
    "params_m": ("params_m", "param_m", "params_millions"),
    "params": ("params", "parameters", "num_params"),
    "macs_m": ("macs_m", "mmacs", "macs_millions"),
    "macs": ("macs",),
    "dataset": ("dataset",),
    "network": ("network",),
}


def _find(data: dict, keys: Sequence[str]) -> Any:
    for key in keys:
        if isinstance(data.get(key), (int, float, str)) and not isinstance(data.get(key), bool):
            return data[key]
    for value in data.values():  # one level of nesting ({"test": {...}})
        if isinstance(value, dict):
            found = _find(value, keys)
            if found is not None:
                return found
    return None


def evaluation_results(run_dir: Path) -> dict[str, Any]:
    """Test error (%), params (M), MACs (M) of a finished evaluation (``eldarts evaluate``'s results.json).

    ``eldarts evaluate`` writes ``test_top1_error``/``test_top5_error`` in %,
    ``params_m`` and ``macs_m``; a few other spellings are accepted too.
    """
    data = read_json(Path(run_dir) / "results.json")
    if not isinstance(data, dict):
        raise RunFolderError(f"{run_dir}/results.json is not a JSON object")
    out = {name: _find(data, keys) for name, keys in _RESULT_KEYS.items()}
    if out["params_m"] is None and isinstance(out["params"], (int, float)):
        out["params_m"] = out["params"] / 1e6
    if out["macs_m"] is None and isinstance(out["macs"], (int, float)):
        out["macs_m"] = out["macs"] / 1e6
    if out["top1_error"] is None:
        acc = _find(data, ("top1_acc", "test_acc", "top1_accuracy", "test_top1_acc"))
        if isinstance(acc, (int, float)):
            out["top1_error"] = 100.0 - (100.0 * acc if acc <= 1 else acc)
    return out


def _evaluation_genotype(run_dir: Path) -> Optional[Genotype]:
    run_dir = Path(run_dir)
    if (run_dir / "genotype.json").exists():
        return genotype_from_dict(read_json(run_dir / "genotype.json"), str(run_dir / "genotype.json"))
    data = read_json(run_dir / "results.json")
    if isinstance(data, dict) and isinstance(data.get("genotype"), dict):
        return genotype_from_dict(data["genotype"], str(run_dir / "results.json"))
    return None


def plot_training_curves(rows: Sequence[dict], stem: Path) -> list[Path]:
    """Loss and accuracy per evaluation epoch: every numeric ``*loss*`` and ``*acc*``/``*top1*``/``*top5*`` column."""
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
            loss_ax.plot(epochs, values, marker="o", markersize=2, label=key)
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
    _require_kind(run_dir, "evaluation")
    out = run_dir / FIGURES
    out.mkdir(exist_ok=True)
    paths: list[Path] = []
    rows = read_metrics(run_dir)
    if rows:
        paths += plot_training_curves(rows, out / "curves")
    genotype = _evaluation_genotype(run_dir)
    if genotype is not None:
        paths += plot_genotype(genotype, out)
    results = evaluation_results(run_dir)
    if _is_imagenet(results):
        atomic_write_text(out / "table2.md", markdown_table(TABLE2_COLUMNS, table2_rows(run_dir)))
        paths.append(out / "table2.md")
    else:
        atomic_write_text(out / "table1.md", markdown_table(TABLE1_COLUMNS, table1_rows([], evaluations=[run_dir])))
        paths.append(out / "table1.md")
    return paths


def _is_imagenet(results: dict) -> bool:
    return "imagenet" in str(results.get("dataset") or "").lower() or results.get("network") == "imagenet"


# ---------------------------------------------------------------------------
# Tables 1-3: measured rows beside published ones
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
    ("runs", "runs"),
    ("source", "Source"),
)

PUBLISHED_SOURCE = "published (paper)"
MEASURED_SOURCE = "measured"


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cost(days: Optional[float], unit: str = "GPU-days") -> str:
    if days is None:
        return "-"
    return f"{days:.3g} {unit}" if days >= 1e-3 else f"{days:.2e} {unit}"


def table1_rows(search_runs: Sequence[Path], evaluations: Sequence[Path] = ()) -> list[dict]:
    """Table 1 (CIFAR-10): the paper's rows, then one measured row per run given."""
    from .published import TABLE1_CIFAR10, format_error

    rows = [
        {
            "architecture": f"{r.architecture} {r.citation}".strip(),
            "test_error": format_error(r.top1_error, r.top1_error_std),
            "params_m": _num(r.params_m),
            "search_cost": _cost(r.search_cost_gpu_days),
            "num_ops": "-" if r.num_ops is None else str(r.num_ops),
            "method": r.method,
            "source": PUBLISHED_SOURCE,
            "published": True,
        }
        for r in TABLE1_CIFAR10
    ]
    for run in search_runs:
        s = search_summary(run)
        rows.append({
            "architecture": f"{s['name']} ({Path(run).name}, search only)",
            "test_error": "-",
            "params_m": "-",
            "search_cost": _cost(s["search_cost_days"], s["search_cost_unit"]),
            "num_ops": "-" if s["num_ops"] is None else str(s["num_ops"]),
            "method": "gradient",
            "source": MEASURED_SOURCE,
            "published": False,
        })
    for run in evaluations:
        e = evaluation_results(run)
        rows.append({
            "architecture": f"{Path(run).name} (evaluated)",
            "test_error": _num(e["top1_error"]),
            "params_m": _num(e["params_m"]),
            "search_cost": "-",
            "num_ops": "-",
            "method": "gradient",
            "source": MEASURED_SOURCE,
            "published": False,
        })
    return rows


def table2_rows(evaluation: Optional[Path] = None) -> list[dict]:
    """Table 2 (ImageNet, mobile setting): the paper's rows, then the measured evaluation."""
    from .published import TABLE2_IMAGENET

    rows = [
        {
            "architecture": f"{r.architecture} {r.citation}".strip(),
            "top1_error": _num(r.top1_error, 1),
            "top5_error": _num(r.top5_error, 1),
            "params_m": ("~" if r.params_approx else "") + _num(r.params_m, 1),
            "macs_m": _num(r.macs_m, 0),
            "search_cost": _cost(r.search_cost_gpu_days),
            "method": r.method,
            "source": PUBLISHED_SOURCE,
            "published": True,
        }
        for r in TABLE2_IMAGENET
    ]
    if evaluation is not None:
        e = evaluation_results(evaluation)
        rows.append({
            "architecture": f"{Path(evaluation).name} (evaluated)",
            "top1_error": _num(e["top1_error"]),
            "top5_error": _num(e["top5_error"]),
            "params_m": _num(e["params_m"]),
            "macs_m": _num(e["macs_m"], 0),
            "search_cost": "-",
            "method": "gradient",
            "source": MEASURED_SOURCE,
            "published": False,
        })
    return rows


def evaluation_table(run_dir: Path) -> tuple[str, tuple, list[dict]]:
    """``(title, columns, rows)`` of the table an evaluation run belongs in (Table 1 or 2)."""
    if _is_imagenet(evaluation_results(run_dir)):
        return "Table 2: ImageNet (mobile setting)", TABLE2_COLUMNS, table2_rows(run_dir)
    return "Table 1: CIFAR-10", TABLE1_COLUMNS, table1_rows([], evaluations=[run_dir])


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """A GitHub Markdown table; published rows are marked in the Source column (and nowhere hidden)."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(k, "")).replace("|", "/") for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# An ablation
# ---------------------------------------------------------------------------


def plot_ablation(rows: Sequence[dict], stem: Path) -> list[Path]:
    """Error per Table 3 row: measured mean +- std over seeds, published values as crosses."""
    measured = [r for r in rows if not r["published"] and r.get("error_mean") is not None]
    published = {r["label"]: r for r in rows if r["published"]}
    figure = _new_figure(max(4.5, 1.1 * len(measured) + 2), 3.6)
    axes = figure.add_subplot()
    labels = [r["label"] for r in measured]
    axes.bar(labels, [r["error_mean"] for r in measured], yerr=[r["error_std"] or 0 for r in measured],
             color="#4c72b0", capsize=3, label=f"measured ({measured[0]['error_metric']})" if measured else "measured")
    crosses = [(i, published[lab]["error_mean"]) for i, lab in enumerate(labels) if lab in published]
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


def write_ablation_report(folder: Path) -> list[Path]:
    """Table 3 (CSV + Markdown), an error bar chart, and figures of each finished run missing them."""
    from .ablate import ablation_table, load_state, write_table3

    folder = Path(folder)
    _require_kind(folder, "ablation")
    state = load_state(folder)
    paths: list[Path] = []
    for run in state["runs"]:
        run_dir = folder / run["id"]
        if run.get("status") == "finished" and not (run_dir / FIGURES / "curves.png").exists():
            try:
                paths += write_search_report(run_dir)
            except RunFolderError:
                pass
    rows = ablation_table(folder)
    paths += write_table3(folder, rows)
    if any(not r["published"] and r.get("error_mean") is not None for r in rows):
        (folder / FIGURES).mkdir(exist_ok=True)
        paths += plot_ablation(rows, folder / FIGURES / "ablation_error")
    return paths
