"""``eldarts search RECIPE``: run an EL-DARTS search into a run folder."""

from __future__ import annotations

import contextlib
import shlex
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax

from rich.markup import escape

from .common import (
    DeviceOpt, DryRunOpt, JsonOpt, OutOpt, RecipeArg, ResumeOpt, SetOpt, check_out_and_resume, command_line, console,
    continue_hint, drawing_figures, err_console, genotype_table, handle_errors, margins_line, missing_root_hint,
    on_every_rank, overrides_with_device, people_to_stderr, print_json, print_resume_notes, printing_results,
    redraw_missing_figures, resume_or_restart, set_options, start_anew_hint, warn_not_applied,
)


class RichSearchCallbacks:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.epochs = 0
        self.epoch_times: list[tuple[bool, float]] = []  # (with architecture steps, seconds) per epoch

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps)

    def step(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def epoch_end(self, row) -> None:
        t = row.temperature
        self.progress.console.print(
            f"epoch {row.epoch + 1:>3}  lr {row.lr:.4f}  "
            f"train {row.train_loss:.3f}/{100 * row.train_acc:.1f}%  "
            f"val {row.val_loss:.3f}/{100 * row.val_acc:.1f}%  "
            f"H {row.entropy_normal:.3f}  skip {row.skip_normal}  "
            + self._margins(row)
            + (f"T {t:.2f}  " if t is not None else "")
            + self._cost(row)
            + ("" if row.arch_updates else "(warm-up)  ")
            + f"{row.images_per_s or 0:.0f} img/s  {row.epoch_seconds:.1f}s"
            + self._eta(row),
            highlight=False,
        )

    @staticmethod
    def _cost(row) -> str:
        """Hardware-aware search: expected cost E, the derived network's, and the target."""
        if row.cost_expected is None:
            return ""
        from ..models.cost import UNITS

        unit = UNITS[row.cost_metric]
        return (f"{row.cost_metric} E {row.cost_expected:.4g} (derived {row.cost_derived:.4g}, "
                f"target {row.cost_target:.4g} {unit})  ")

    @staticmethod
    def _margins(row) -> str:
        """Median margins of the cell derived now: op (chosen - runner-up) / node (kept - dropped)."""
        if row.edge_margin_median is None:
            return ""
        node = "" if row.node_margin_median is None else f"/{row.node_margin_median:.3f}"
        return f"margin {row.edge_margin_median:.3f}{node}  "

    def derive_decision(self, decision) -> None:
        """One line per perturbation decision (derive.method: perturbation)."""
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        chosen = decision.candidates.index(decision.chosen)
        acc = decision.accuracies[chosen]
        losses = decision.losses or [0.0] * len(decision.candidates)
        # ordered as the choice is made (engines/derive.py): by accuracy, ties by the loss (the higher, the worse)
        others = sorted(((a, -loss), c) for i, (a, loss, c) in
                        enumerate(zip(decision.accuracies, losses, decision.candidates)) if i != chosen)
        runner_up = (others[0] if decision.kind == "op" else others[-1]) if others else None
        runner_up = (runner_up[0][0], runner_up[1]) if runner_up else None
        where = f"e{decision.edge}" if decision.kind == "op" else f"node {decision.node}"
        what = "keeps" if decision.kind == "op" else "drops"
        other = f", without {runner_up[1]} {runner_up[0]:.1f}%" if runner_up else ""
        self.progress.console.print(
            f"perturbation {decision.step + 1}: {decision.cell} {where} {what} {decision.chosen} "
            f"(val acc without it {acc:.1f}%{other}; margin {decision.margin:.1f} points)",
            highlight=False, markup=False,
        )

    def _eta(self, row) -> str:
        """Time left for the whole search, from the mean time of this session's epochs with architecture steps (the
        epochs left have them); during the warm-up, from its epochs', said to be a floor (an ETA from warm-up epochs
        read 18 s for 24 s of work: they run no architecture step)."""
        self.epoch_times.append((bool(row.arch_updates), row.epoch_seconds))
        left = self.epochs - row.epoch - 1
        if left <= 0:
            return ""
        arch = [seconds for updates, seconds in self.epoch_times if updates]
        times = arch or [seconds for _, seconds in self.epoch_times]
        from ..runs.tables import fmt_duration

        eta = fmt_duration(left * sum(times) / len(times))
        return f"  (search eta {eta})" if arch else f"  (search eta over {eta}: warm-up epochs are faster)"


def register(app: typer.Typer) -> None:
    app.command()(search)


@handle_errors(restartable=True)
def search(
    recipe: RecipeArg,
    set_: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Search a cell architecture with EL-DARTS; leaves genotype.json and metrics in a run folder.

    Data-parallel over N processes: torchrun --nproc_per_node N -m eldarts_cli search RECIPE
    (data.batch_size is the global batch; rank 0 reports and writes).
    """
    on_every_rank(lambda dist: _search(dist, recipe, set_, out, resume, dry_run, json_, device))


def torchrun_prefix(dist) -> str:
    """The torchrun launch this process is part of (for hints): what the launching torchrun was given before this
    command (``torchrun --standalone --nproc_per_node 2 -m eldarts_cli``), read from its command line where it is
    this process's parent (Linux); else ``torchrun [--nnodes M] --nproc_per_node N -m eldarts_cli``, which dropped
    ``--standalone`` and the rendezvous options."""
    import os

    if (given := _launch_options(os.getppid())) is not None:
        return shlex.join(["torchrun", *given])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    nodes = f" --nnodes {dist.world_size // local}" if local != dist.world_size else ""
    return f"torchrun{nodes} --nproc_per_node {local} -m eldarts_cli"


def _launch_options(parent: int) -> Optional[list[str]]:
    """The arguments of the torchrun (or ``python -m torch.distributed.run``) process ``parent`` up to and including
    the program it started (``-m eldarts_cli``, a script's path): those before this process's own arguments."""
    import sys

    try:
        given = [arg.decode() for arg in Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[:-1]]
    except (OSError, UnicodeDecodeError):
        return None
    starts = [i + 1 for i, arg in enumerate(given)
              if Path(arg).name == "torchrun" or (arg == "torch.distributed.run" and given[i - 1:i] == ["-m"])]
    own = sys.argv[1:]
    if not starts or len(given) <= starts[0] + len(own) or given[len(given) - len(own):] != own:
        return None
    return given[starts[0]:len(given) - len(own)]


def _search(dist, recipe: Path, set_, out, resume, dry_run: bool, json_: bool, device) -> None:
    # the run folder's lock, while this command runs it; with --json, stdout holds the summary alone
    with contextlib.ExitStack() as held, people_to_stderr(json_ and not dry_run):
        _search_in(held, dist, recipe, set_, out, resume, dry_run, json_, device)


def _search_in(held: contextlib.ExitStack, dist, recipe: Path, set_, out, resume, dry_run: bool, json_: bool,
               device) -> None:
    from ..config.base import load_given_recipe, recipe_to_dict, recipe_yaml
    from ..config.search import SearchRecipe, nb201_ops_warning, sampling_warning
    from ..core.device import compile_warning, format_bytes
    from ..core.device import resolve_device
    from ..engines.graphs import check_graphs_device
    from ..engines.search import (Searcher, check_checkpoint, check_launch, check_search_data, resume_recipe,
                                  resume_state, supernet_summary)
    from ..models.decisiveness import collapse_warning, margin_warning
    from ..runs.figures import write_search_report
    from ..runs.files import SearchSummary, restore_genotype_files, search_finished
    from ..runs.folders import check_run_dir, default_run_dir, prepare_run_dir, read_metrics, remove_unused_run_dir
    from ..engines.finite import not_learning
    from ..runs.tables import fmt_search_cost

    main = dist.is_main
    launch = torchrun_prefix(dist) if dist.enabled else None  # (in commands a hint names: the same launch)
    overrides = overrides_with_device(set_, device)
    cfg = load_given_recipe(recipe, SearchRecipe, overrides, Path(resume) if resume else None)
    for warning in (sampling_warning(cfg), nb201_ops_warning(cfg)) if main else ():
        if warning:
            err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if main and (warning := compile_warning(cfg.runtime.compile, cfg.runtime.device)):
        warnings.warn(warning)
    if dry_run:
        if not main:
            return
        if dist.enabled:  # what the run refuses at its start under this launch
            check_launch(cfg, dist.world_size)
        if out is not None or resume is not None:
            check_out_and_resume(out, resume)
            check_run_dir(Path(resume or out), resume=resume is not None, kind="search", busy=True)
        if resume is not None:  # the plan of what --resume runs: the run's own recipe, with this --set
            said = err_console if json_ else console  # (with --json, stdout holds the plan alone)
            if search_finished(Path(resume)):
                cell = SearchSummary.read(Path(resume)).cell
                said.print(f"{resume}: this search has finished; nothing to resume (its genotype: "
                           f"{Path(resume) / 'genotype.json'}; {evaluate_command(Path(resume), cell)})",
                           highlight=False, markup=False)
                warn_not_applied(Path(resume), SearchRecipe, recipe, set_, "search", "search again")
                if json_:  # what the resume would print: the finished search's summary (stdout was empty)
                    print_json(SearchSummary.read(Path(resume)).dump())
                return
            with start_anew_hint(Path(resume), "search", launch):
                checkpoint = resume_state(Path(resume))  # (a damaged summary.json or checkpoint, refused as the run)
            cfg, notes = resume_recipe(Path(resume), cfg, overrides)
            if checkpoint is not None:  # what the resume refuses of its checkpoint: another recipe or process count
                check_checkpoint(checkpoint, cfg, dist.world_size, Path(resume))
        check_search_data(cfg)  # what the run would refuse at its start, without loading the data (missing: said)
        if resume is not None:
            print_resume_notes(said, Path(resume), str(recipe), notes)
        sizes = supernet_summary(cfg)
        if json_:  # (with the warm-up worked out where the recipe leaves it null, as the text says)
            print_json({"recipe": recipe_to_dict(cfg), "supernet": sizes, "warmup_epochs": cfg.search.warmup})
            return
        console.print(Syntax(recipe_yaml(cfg), "yaml", theme="ansi_dark", background_color="default"))
        shape = sizes["input"]
        if sizes["cell"] == "darts":
            cells = f"supernet: {sizes['cells']} cells (reductions at {sizes['reduction_cells']}), "
        else:
            cells = (f"NAS-Bench-201 supernet: {sizes['cells']} cells in 3 stages joined by residual reduction "
                     f"blocks, ")
        console.print(
            cells + f"{sizes['edges_per_cell']} edges x {len(sizes['ops'])} ops, "
            f"{sizes['weight_params_m']:.3f}M weights, {sizes['arch_params']} architecture parameters "
            f"(for {shape['channels']}-channel input, {shape['num_classes']} classes); "
            f"training needs about {format_bytes(sizes['estimated_training_memory_bytes'])} at batch "
            f"{cfg.data.batch_size} (estimated)"
        )
        if cfg.search.warmup_epochs is None:  # (null in the recipe: worked out from warmup_fraction)
            console.print(f"warm-up: {cfg.search.warmup} of {cfg.search.epochs} epochs without architecture steps "
                          f"(search.warmup_fraction {cfg.search.warmup_fraction:g})", highlight=False)
        if sizes["recompute"]:  # (None: a run here would be refused, which a warning said)
            why = "to fit (runtime.recompute: auto)" if cfg.runtime.recompute == "auto" else "(runtime.recompute: true)"
            console.print(f"on {sizes['device']} its op blocks recompute their activations {why}", highlight=False)
        elif sizes["recompute"] is not None:
            why = "it fits with room to spare (runtime.recompute: auto)" if cfg.runtime.recompute == "auto" else \
                "runtime.recompute: false"
            console.print(f"on {sizes['device']} it keeps every activation: {why}", highlight=False)
        if sizes["cost"] is not None:
            _print_cost_plan(sizes["cost"])
        return
    if cfg.runtime.cuda_graphs:  # refused before a run folder is named (the Searcher checks it again)
        check_graphs_device(True, resolve_device(cfg.runtime.device), "search")
    elif resume is None:  # a device this machine lacks, likewise (a resume runs on the run's own recipe's device)
        resolve_device(cfg.runtime.device)
    check_out_and_resume(out, resume)

    def prepare():  # rank 0 names, creates or reads the run folder; every rank gets the result
        target = Path(resume or out or default_run_dir(cfg.name, time.strftime("%Y%m%d-%H%M%S")))
        run_dir = prepare_run_dir(target, resume=resume is not None, kind="search", hold=held)
        if resume is not None and search_finished(run_dir):
            return run_dir, True, cfg, []
        resolved, notes = resume_recipe(run_dir, cfg, overrides) if resume is not None else (cfg, [])
        return run_dir, False, resolved, notes

    run_dir, finished, cfg, notes = dist.on_main(prepare)
    if finished:
        cell = SearchSummary.read(run_dir).cell
        console.print(f"{run_dir}: this search has finished; nothing to resume. "
                      f"Its genotype: {run_dir / 'genotype.json'}  ({evaluate_command(run_dir, cell)})",
                      highlight=False, markup=False)
        if main:
            warn_not_applied(run_dir, SearchRecipe, recipe, set_, "search", "search again")
            if written := restore_genotype_files(run_dir):
                console.print(f"{', '.join(written)} {'was' if len(written) == 1 else 'were'} missing: written again "
                              f"from {run_dir / 'summary.json'}", highlight=False, markup=False)
            redraw_missing_figures(run_dir, write_search_report, "search")
            if json_:
                print_json(SearchSummary.read(run_dir).dump())
        return

    def print_run_folder():
        console.print(f"run folder: [bold]{escape(str(run_dir))}[/]" + ("  (resuming)" if resume else "")
                      + (f"  ({dist.world_size} processes)" if dist.enabled else ""))
        if resume is not None:
            print_resume_notes(console, run_dir, str(recipe), notes)

    if resume is None:  # (a resume says so once the run accepted it: its checkpoint's recipe, process count, prices)
        print_run_folder()
    again = command_line("search", recipe, "--resume", run_dir)
    restart = command_line("search", recipe, "--out", run_dir, *set_options(overrides))
    if launch:  # the same launch again: a search resumes on as many processes as it ran on
        again, restart = again.replace("eldarts", launch, 1), restart.replace("eldarts", launch, 1)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
    )
    # stopped while starting: a new run leaves no folder if it wrote nothing yet (the same command starts it
    # again), else the command that resumes it; a resumed one prints the command that continues it, as later
    starting = continue_hint(again if resume is not None else resume_or_restart(run_dir, again, restart))
    with progress if main else contextlib.nullcontext():
        try:
            with starting, missing_root_hint(cfg.data.root if resume is not None else None, again), \
                    start_anew_hint(run_dir, "search", launch):
                searcher = Searcher(cfg, run_dir, resume=resume is not None, dist=dist,
                                    callbacks=RichSearchCallbacks(progress) if main else None)
        except BaseException:
            if main:
                remove_unused_run_dir(run_dir)  # leave nothing behind for a run that never started
            raise
        if resume is not None:
            print_run_folder()
        if main and searcher.recompute and cfg.runtime.recompute == "auto":
            console.print("memory: the supernet would not fit at this batch size as it is, so its op blocks "
                          "recompute their activations in the backward pass (runtime.recompute: auto; the same "
                          "search, slower per step)", highlight=False)
        if searcher.start_epoch >= cfg.search.epochs:  # stopped after its last checkpoint, before its summary
            console.print("every epoch was searched before: deriving the genotype and writing the summary remain")
        elif searcher.start_epoch:
            console.print(f"resuming at epoch {searcher.start_epoch + 1} of {cfg.search.epochs}")
        elif resume is not None:
            console.print("no epoch was saved before: starting from epoch 1")
        # (the command, and whether an epoch was saved by then: the hint's words)
        with continue_hint(resume_or_restart(run_dir, again, again),
                           on_memory=[] if searcher.recompute else ["runtime.recompute=true"]):
            genotype = searcher.run()
            if not main:  # rank 0 alone selects the cell and writes the files: waited for here, where a stop (rank 0
                dist.wait_for_main()  # killed, and torchrun stopping this rank) can say how to continue in its place
    if not main:
        return
    summary = SearchSummary.read(run_dir)  # as the run wrote it (a latency cost is measured once, there)
    with drawing_figures(run_dir, "search"):  # stopped or a full disk there: the results are saved
        write_search_report(run_dir)  # figures and tables, as `eldarts report` writes them
    with printing_results(run_dir, "search"):  # stopped now: finished, and said so
        console.print(genotype_table(genotype))
        for method, other in (summary.genotypes or {}).items():
            if other != genotype:
                console.print(genotype_table(other, title=f"Cells by {method} selection "
                                             f"({run_dir / f'genotype-{method}.json'})"))
        console.print(
            f"search cost: {fmt_search_cost(summary.search_cost)} on {summary.device} (measured: the epochs' wall "
            "time, over every resume"
            + (f", x {dist.world_size} processes" if dist.enabled else "")  # (selection: rank 0 alone, counted once)
            + ((", and perturbation selection's" + (" (rank 0 alone)" if dist.enabled else ""))
               if summary.derive_seconds else "") + ")"
        )
        console.print(margins_line(summary), highlight=False)
        last = (read_metrics(run_dir) or [{}])[-1]
        # (the class count of the data it loaded)
        stuck = not_learning(last.get("train_loss"), searcher.data.num_classes, cfg.optim.lr)
        for warning in (stuck, margin_warning(summary.margins, summary.derive_method),
                        collapse_warning(genotype, summary.cost, cfg.search_space.ops, summary.derive_method)):
            if warning:
                err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if summary.cost is not None:
            print_cost_result(summary.cost)
        console.print(f"genotype: {run_dir / 'genotype.json'}  ({evaluate_command(run_dir, summary.cell)})",
                      highlight=False, markup=False)
        if warning := _no_test_split(cfg):
            err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if json_:
            print_json(summary.dump())


def _no_test_split(cfg) -> Optional[str]:
    """Where the searched image folder has no test split: the evaluate command printed reads it, and would fail (a
    search reads train/ alone)."""
    from ..core.errors import DataError
    from ..data.datasets import DATASETS
    from ..data.loaders import check_data

    if not DATASETS.get(cfg.data.dataset).from_tree or cfg.data.root is None:
        return None
    try:
        check_data(cfg.data, splits=("test",))
    except DataError as error:
        return f"the evaluate command above reads its test images from the same data, which it lacks: {error}"
    return None


def shipped_recipe(name: str) -> str:
    """A recipe of the repository's ``recipes/``, as a path that works from here: ``recipes/NAME`` in the
    repository's root (as README types it), else the clone's own path (the printed command failed elsewhere)."""
    here = Path("recipes") / name
    if here.is_file():
        return str(here)
    clone = Path(__file__).resolve().parents[2] / "recipes" / name
    return str(clone) if clone.is_file() else str(here)


def evaluate_command(run_dir: Path, cell: str) -> str:
    """The command that trains a finished search's cell: a NAS-Bench-201 cell needs its evaluation recipe (the
    default one builds DARTS' network, and refuses an arch string); a cell searched on the digits (the quickstart)
    the digits' one (the default reads CIFAR-10, which the quickstart's offline machine may not hold)."""
    from ..runs.folders import recipe_dataset, run_recipe

    dataset = recipe_dataset(run_dir)
    recipe = (shipped_recipe("eval-nb201-cifar10.yaml") if cell == "nb201" else
              shipped_recipe("eval-quick.yaml") if dataset == "digits" else None)
    data = run_recipe(run_dir).get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if dataset == "imagefolder" and isinstance(root, str):
        # the search's images (a JPEG CIFAR-10): the evaluation recipes read torchvision's CIFAR-10, which the
        # machine may not hold (the printed command failed: "cifar10 not found")
        return command_line("evaluate", run_dir, recipe or shipped_recipe("eval-cifar10.yaml"),
                            "--set", "data.dataset=imagefolder", "--set", f"data.root={root}")
    return command_line("evaluate", run_dir, recipe)


def _print_cost_plan(cost: dict) -> None:
    from ..runs.tables import fmt_hardware

    unit = cost["unit"]
    console.print(
        f"cost: {cost['metric']} of the evaluation network ({cost['network']}), target "
        f"{fmt_hardware(cost['target'], unit)}, {cost['form']} x {cost['weight']:g}; derivable networks cost "
        f"{fmt_hardware(cost['cheapest'], unit)} to {fmt_hardware(cost['dearest'], unit)}, expected now "
        f"{fmt_hardware(cost['expected_now'], unit)}" + (f"; table {cost['table']}" if cost["table"] else ""),
        highlight=False,
    )
    for note in cost["advice"]:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def print_cost_result(cost) -> None:
    from ..runs.tables import fmt_hardware

    unit = cost.unit
    measured = (f"measured {fmt_hardware(cost.measured, unit)} ({cost.measured_by})"
                if cost.measured is not None else f"not measured: {cost.note}")
    error = f", prediction error {cost.error_percent:+.2f}%" if cost.error_percent is not None else ""
    console.print(
        f"{cost.metric} of the derived network: predicted {fmt_hardware(cost.predicted, unit)}, {measured}{error}; "
        f"target {fmt_hardware(cost.target, unit)}: {'within' if cost.within_target else 'over'}",
        highlight=False,
    )
    if cost.note and cost.measured is not None:
        err_console.print(f"[yellow]warning:[/] {cost.note}", highlight=False)
