"""``eldarts profile-ops``: measure each op, chart it, choose a space from budgets (paper 2.2.1, Figure 1)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import (
    FittedTable, JsonOpt, check_device_option, console, err_console, expanded, handle_errors, print_json,
)

def PathOpt(*names: str, help: str):
    return typer.Option(*names, help=help, dir_okay=False, show_default=False, callback=expanded, metavar="FILE")


def register(app: typer.Typer) -> None:
    app.command("profile-ops", no_args_is_help=False)(profile_ops_command)


@handle_errors
def profile_ops_command(
    ops: Annotated[Optional[list[str]], typer.Option("--ops", metavar="OP[,OP...]", help="Ops to measure, comma list or repeated, or a search space's name alone (ess, darts, nb201) for its ops (default: every registered op; with --table, every one but none).", show_default=False)] = None,
    channels: Annotated[Optional[int], typer.Option(metavar="N", help="Channels C of the op's input and output (default: 16).", show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(metavar="N", help="Input height = width, in pixels (default: 32).", show_default=False)] = None,
    batch: Annotated[Optional[int], typer.Option(metavar="N", help="Batch size of each timed call (default: 64; 1 with --table).", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(metavar="N", help="1 (normal cell) or 2 (reduction cell) (default: 1).", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.", show_default=False)] = None,
    repeats: Annotated[Optional[int], typer.Option(metavar="N", help="Timed calls per op (median and quartiles are reported) (default: 50).", show_default=False)] = None,
    warmup: Annotated[Optional[int], typer.Option(metavar="N", help="Untimed calls per op before timing (default: 10).", show_default=False)] = None,
    backward: Annotated[bool, typer.Option("--backward/--no-backward", metavar="", help="Also time forward+backward in train mode.", show_default=False)] = False,
    threads: Annotated[Optional[int], typer.Option(metavar="N", help="CPU threads while measuring (default: torch's current count).", show_default=False)] = None,
    source: Annotated[Optional[Path], PathOpt("--from", help="Read measurements from a profile JSON instead of measuring.")] = None,
    out: Annotated[Optional[Path], PathOpt("--out", "-o", help="Write the measurements as JSON (parent folders are created).")] = None,
    plot: Annotated[Optional[Path], PathOpt("--plot", help="Write a bar chart of latency per op (.png, .pdf or .svg).")] = None,
    budget_latency: Annotated[Optional[float], typer.Option("--budget-latency", metavar="MS", help="Keep ops whose forward median is at most MS milliseconds (for the whole batch, on this device).", show_default=False)] = None,
    budget_latency_rel: Annotated[Optional[float], typer.Option("--budget-latency-rel", metavar="X", help="Keep ops at most X times skip_connect's forward latency.", show_default=False)] = None,
    budget_macs: Annotated[Optional[float], typer.Option("--budget-macs", metavar="M", help="Keep ops with at most M million MACs per image.", show_default=False)] = None,
    budget_params: Annotated[Optional[float], typer.Option("--budget-params", metavar="K", help="Keep ops with at most K thousand parameters.", show_default=False)] = None,
    keep_none: Annotated[bool, typer.Option("--keep-none", metavar="", help="Keep the 'none' op in the emitted space (DARTS style).")] = False,
    emit_space: Annotated[Optional[Path], PathOpt("--emit-space", help="Write the ops within the budgets as a search_space YAML snippet for a recipe's include:.")] = None,
    table: Annotated[Optional[Path], PathOpt("--table", help="Write a cost table for hardware-aware search: every op at every size the --network uses (batch 1 by default).")] = None,
    network: Annotated[Optional[Path], PathOpt("--network", help="With --table: the evaluation recipe whose network is measured.")] = None,
    nodes: Annotated[Optional[int], typer.Option(metavar="N", help="With --table: nodes per cell of the searched cells (default: 4).", show_default=False)] = None,
    multiplier: Annotated[Optional[int], typer.Option(metavar="N", help="With --table: nodes concatenated into a cell's output (default: 4).", show_default=False)] = None,
    dtype: Annotated[Optional[str], typer.Option(metavar="DTYPE", help="float32, bfloat16 or float16 (default: the precision an evaluation network trains in on the device; with --table, the evaluation recipe's).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite files that --out, --plot, --emit-space and --table name (refused by default).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure latency, MACs and parameters of each op on this device (paper Figure 1) and select a search space from budgets.

    With --table and --network: measure every op and fixed part of an evaluation network, for a search's cost: section.
    """
    from ..engines.profile import (
        REFERENCE_OP, Budgets, ProfileError, busy_cpu_warning, emit_space_yaml, load_profile, plot_latency,
        profile_ops, save_profile, select_space,
    )

    budgets = Budgets(budget_latency, budget_latency_rel, budget_macs, budget_params)
    timing = {"--repeats": repeats, "--warmup": warmup, "--threads": threads}
    repeats, warmup = 50 if repeats is None else repeats, 10 if warmup is None else warmup
    if table is None and network is None:  # the table's own options: say so rather than ignore them
        table_only = [flag for flag, value in (("--nodes", nodes), ("--multiplier", multiplier)) if value is not None]
        if table_only:
            one = len(table_only) == 1
            raise ProfileError(f"{' and '.join(table_only)} {'applies' if one else 'apply'} with --table and --network "
                               f"only; leave {'it' if one else 'them'} out, or write a cost table")
    nodes, multiplier = 4 if nodes is None else nodes, 4 if multiplier is None else multiplier
    if table is not None or network is not None:
        given = {"--from": source, "--out": out, "--plot": plot, "--emit-space": emit_space, "--channels": channels,
                 "--resolution": resolution, "--stride": stride}
        given.update({"--backward": backward or None, "--keep-none": keep_none or None,
                      "--budget-*": budgets if budgets.any() else None})
        _network_table(table, network, ops, device, batch, dtype, nodes, multiplier, repeats, warmup, threads,
                       [flag for flag, value in given.items() if value is not None], as_json, force)
        return
    if source is not None:  # a profile's sizes are the ones it was measured at: say so rather than ignore them
        measuring = {"--channels": channels, "--resolution": resolution, "--batch": batch,
                     "--stride": stride, "--device": device, "--dtype": dtype, "--backward": backward or None,
                     **timing}
        ignored = [flag for flag, value in measuring.items() if value is not None]
        if ignored:
            raise ProfileError(f"--from reads measurements already made: {', '.join(ignored)} would not apply; "
                               f"leave {'it' if len(ignored) == 1 else 'them'} out, or measure anew without --from")
    channels, resolution = 16 if channels is None else channels, 32 if resolution is None else resolution
    batch, stride = 64 if batch is None else batch, 1 if stride is None else stride
    _check_outputs(out, plot, emit_space, budgets, force=force)
    if source is not None:
        result = _only(load_profile(source), _split(ops), source, budgets)
    else:
        names = _split(ops)
        if budgets.latency_rel is not None and names is not None and REFERENCE_OP not in names:
            raise ProfileError(f"--budget-latency-rel is relative to {REFERENCE_OP}: add it to --ops")
        target = _device(device)
        with _progress(warning=busy_cpu_warning(target, threads)) as callback:
            result = profile_ops(
                names, channels=channels, resolution=resolution, batch=batch, stride=stride,
                device=target, repeats=repeats, warmup=warmup, backward=backward, threads=threads, dtype=dtype,
                progress=callback,
            )
    if out is not None:
        save_profile(result, out)  # first: a budget nothing fits must not lose the measurements
    space = select_space(result, budgets, keep_none=keep_none) if budgets.any() else None
    if emit_space is not None:
        emit_space_yaml(space, emit_space, result=result, budgets=budgets)
    if plot is not None:
        plot_latency(result, plot, selected=space, budget_ms=budgets.latency_ms)
    if as_json:  # the profile as --out writes it; with budgets, the ops they select beside it
        data = result.model_dump(mode="json")
        if space is not None:
            data = {"profile": data, "selection": {"within": budgets.describe(), "ops": list(space)}}
        print_json(data)
        return
    console.print(FittedTable(_table(result, budgets, space)))
    if space is not None:
        console.print(f"space within {budgets.describe()}: [bold]{', '.join(space)}[/]")
    for label, path in (("profile", out), ("search space", emit_space), ("plot", plot)):
        if path is not None:
            console.print(f"wrote {label}: {path}", markup=False, soft_wrap=True)


def _network_table(table, network, ops, device, batch, dtype, nodes, multiplier, repeats, warmup, threads,
                   conflicting: list[str], as_json: bool, force: bool = False) -> None:
    """``--table OUT --network RECIPE``: a cost table for hardware-aware search (``engines/cost.py``)."""
    from ..engines.cost import check_table_output, load_evaluation_recipe, profile_network, save_table
    from ..engines.profile import ProfileError, busy_cpu_warning

    if table is None or network is None:
        raise ProfileError("--table and --network go together: eldarts profile-ops --table OUT.json --network EVAL_RECIPE")
    if conflicting:
        raise ProfileError(f"--table measures the sizes of the --network; {', '.join(conflicting)} "
                           f"{'belongs' if len(conflicting) == 1 else 'belong'} to measuring single ops and "
                           f"{'does' if len(conflicting) == 1 else 'do'} not apply")
    check_table_output(table, force)
    recipe = load_evaluation_recipe(network, "--network")
    target = _device(device)
    with _progress(warning=busy_cpu_warning(target, threads)) as callback:
        result = profile_network(recipe, recipe_path=str(network), ops=_split(ops), nodes=nodes, multiplier=multiplier,
                                 device=target, batch=1 if batch is None else batch, dtype=dtype, repeats=repeats,
                                 warmup=warmup, threads=threads, progress=callback)
    save_table(result, table)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    console.print(FittedTable(_cost_table(result)))
    console.print(f"wrote cost table: {table}  (use it in a search recipe: cost: {{metric: latency, table: {table}, "
                  f"network: {network}, target: MS}})", highlight=False)


def _device(device: Optional[str]):
    """``--device``, resolved; an empty one is refused as search and evaluate refuse it, not taken for auto."""
    from ..core.device import resolve_device

    check_device_option(device)  # (search's message)
    return resolve_device(device or "auto")


def _cost_table(result) -> Table:
    env, settings, net = result.environment, result.settings, result.network
    sites = sorted({(e.channels, e.resolution, e.stride) for e in result.ops})
    ops = result.op_names()
    costs = {(e.op, e.channels, e.resolution, e.stride): e.forward for e in result.ops}
    fixed = sum(e.forward.median_ms for e in result.fixed)
    table = Table(
        title=f"op latency (ms, median) in the {net.kind} network C={net.channels}, {net.layers} cells, "
              f"input {'x'.join(map(str, net.input))} on {env.label}",
        caption=(f"batch {settings.batch}, {settings.dtype}, channels_last={settings.channels_last}, median of "
                 f"{settings.repeats} after {settings.warmup} warm-up; torch {env.torch_version}, threads={env.threads}; "
                 f"fixed parts (stem, preprocessing, node sums, classifier): {fixed:.4g} ms in all"),
    )
    table.add_column("C, size, stride", no_wrap=True)
    for op in ops:
        table.add_column(op, justify="right")
    for c, r, stride in sites:
        table.add_row(f"{c}, {r}x{r}, {stride}",
                      *(f"{costs[(op, c, r, stride)].median_ms:.4f}" if (op, c, r, stride) in costs else "-" for op in ops))
    return table


def _only(result, names: Optional[list[str]], source: Path, budgets):
    """``--from`` with ``--ops``: the profile's measurements of those ops alone (README's way to narrow the
    candidates to the paper's ESS from a profile measured once, say on a GPU); it was refused."""
    from ..core.registry import UnknownNameError
    from ..engines.profile import REFERENCE_OP, ProfileError
    from ..models.ops import OPS

    if names is None:
        return result
    try:
        names = [OPS.canonical(name) for name in names]
    except UnknownNameError as error:
        raise ProfileError(f"--ops: {error}") from None
    missing = [name for name in names if name not in result.names()]
    if missing:
        raise ProfileError(f"--ops {', '.join(missing)}: not in {source}, which measured {', '.join(result.names())}; "
                           f"measure {'it' if len(missing) == 1 else 'them'} anew without --from")
    if budgets.latency_rel is not None and REFERENCE_OP not in names:
        raise ProfileError(f"--budget-latency-rel is relative to {REFERENCE_OP}: add it to --ops")
    return result.model_copy(update={"ops": [item for item in result.ops if item.name in names]})


def _split(values: Optional[list[str]]) -> Optional[list[str]]:
    from ..engines.profile import ProfileError

    if values is None:
        return None
    from ..models.spaces import SEARCH_SPACES

    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise ProfileError("--ops is empty; give op names, e.g. --ops skip_connect,sep_conv_3x3")
    if len(names) == 1 and names[0] in SEARCH_SPACES:  # a space's name (--ops ess), as --table takes it
        return list(SEARCH_SPACES.get(names[0]).ops)
    space = next((name for name in names if name in SEARCH_SPACES), None)
    if space is not None:  # beside ops it read as an unknown op, though it works alone
        listed = [op for name in names for op in (SEARCH_SPACES.get(name).ops if name in SEARCH_SPACES else [name])]
        raise ProfileError(f"--ops: {space} is a search space's name, taken only on its own (--ops {space}); to "
                           f"measure other ops too, list them all: --ops {','.join(dict.fromkeys(listed))}")
    return names


def _check_outputs(out: Optional[Path], plot: Optional[Path], emit_space: Optional[Path], budgets,
                   force: bool = False) -> None:
    """Fail before measuring rather than after; never overwrite an existing file without ``--force``."""
    from ..engines.profile import PLOT_FORMATS, ProfileError

    if emit_space is not None and not budgets.any():
        raise ProfileError(
            "--emit-space needs a budget: add --budget-latency MS, --budget-latency-rel X, --budget-macs M or --budget-params K"
        )
    if plot is not None and plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ProfileError(f"--plot {plot}: use a .png, .pdf or .svg file name")
    for flag, path in (("--out", out), ("--plot", plot), ("--emit-space", emit_space)):
        if path is None:
            continue
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ProfileError(f"{flag} {path}: {parent} is a file, not a folder")
        if parent is not None:  # a folder it cannot write to: say so now, not after minutes of measuring
            try:
                tempfile.NamedTemporaryFile(dir=parent, prefix=".eldarts-").close()
            except OSError as error:
                raise ProfileError(f"{flag} {path}: cannot write in {parent}: {error.strerror or error}") from None
        if path.is_dir():
            raise ProfileError(f"{flag} {path} is a folder; give a file name")
        if path.exists() and not force:
            raise ProfileError(f"{flag} {path} exists; eldarts does not overwrite it unless you add --force")
        run = _run_holding(path)
        if run is not None:  # --force is for profile-ops' own outputs, never for a search's or a training's files
            raise ProfileError(f"{flag} {path} is a file of the run in {run}; eldarts does not overwrite a run's "
                               "files, even with --force: name another file")
    named = [p.resolve() for p in (out, plot, emit_space) if p is not None]
    if len(set(named)) != len(named):
        raise ProfileError("--out, --plot and --emit-space must name different files")


def _run_holding(path: Path) -> Optional[Path]:
    """The run folder that holds ``path``, an existing file other than an op profile (which profile-ops may have
    saved there before), else ``None``: a search's, evaluation's or ablation's files, figures included."""
    from ..engines.profile import ProfileError, load_profile
    from ..runs.folders import MARKER, run_kind

    if not path.is_file():
        return None
    folder = next((f for f in (path.parent, path.parent.parent)[: 1 + (path.parent.name == "figures")]
                   if (f / MARKER).exists() or run_kind(f) is not None), None)
    if folder is None:
        return None
    if path.stat().st_size > 2**24:  # a checkpoint or weights: no profile is that large
        return folder
    try:
        load_profile(path)
    except ProfileError:  # whatever else it is, the run's
        return folder
    return None


class _progress:
    """A rich progress bar on stderr (so ``--json`` stdout stays clean), as a ``profile_ops`` callback.

    The bar starts at the first callback, i.e. once the request has been
    validated, so an argument error is not preceded by an empty bar.
    """

    def __init__(self, warning: Optional[str] = None):
        self.warning = warning
        self.bar: Optional[Progress] = None

    def __enter__(self):
        return self.callback

    def callback(self, op: str, done: int, total: int) -> None:
        if self.bar is None:
            if self.warning:
                err_console.print(f"[yellow]warning:[/] {self.warning}")
            self.bar = Progress(
                TextColumn("measuring [bold]{task.description:<16}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
                disable=not err_console.is_terminal,  # no bar residue in logs and pipes
            )
            self.bar.start()
            self.task = self.bar.add_task(op, total=total)
        self.bar.update(self.task, description=op, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _table(result, budgets, space: Optional[list[str]]) -> Table:
    from ..engines.profile import REFERENCE_OP

    env, settings = result.environment, result.settings
    load = f", load {env.load_average:.1f}" if env.load_average is not None else ""
    table = Table(
        title=f"op cost on {env.label}",
        caption=(
            f"C={settings.channels}, {settings.resolution}x{settings.resolution}, batch {settings.batch}, "
            f"stride {settings.stride}, {settings.dtype}, channels_last={settings.channels_last}; "
            f"median of {settings.repeats} after {settings.warmup} warm-up; "
            f"torch {env.torch_version}, threads={env.threads}{load}; x skip = latency / {REFERENCE_OP}'s; "
            f"MACs by {env.mac_counter}"
        ),
    )
    table.add_column("op", no_wrap=True, min_width=max(len(name) for name in result.names()))
    table.add_column("fwd ms\nmedian", justify="right")
    table.add_column("IQR\nms", justify="right")
    if settings.backward:
        table.add_column("fwd+bwd\nms", justify="right")
    table.add_column("MACs\nM/img", justify="right")
    table.add_column("params\nK", justify="right")
    table.add_column("x skip", justify="right")
    if space is not None:
        table.add_column("budget", justify="center")
    for item in result.by_latency():
        relative = result.relative_latency(item.name)
        row = [item.name, f"{item.forward.median_ms:.4f}", f"{item.forward.iqr_ms:.4f}"]
        if settings.backward:
            row.append(f"{item.forward_backward.median_ms:.4f}" if item.forward_backward else "-")
        row += [f"{item.macs_m:.3f}", f"{item.params_k:.3f}", "-" if relative is None else f"{relative:.1f}"]
        if space is not None:
            if item.name in space:
                row.append("[green]✓[/]")
            elif budgets.allows(result, item.name):
                row.append("[dim]✓ dropped[/]")  # 'none' without --keep-none
            else:
                row.append("[red]✗[/]")
        table.add_row(*row)
    return table
