"""``eldarts ablate RECIPE``: the ablation of paper Table 3 as one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .common import (
    FittedTable, JsonOpt, OutOpt, RecipeArg, ResumeOpt, SetOpt, check_out_and_resume, command_line, console,
    continue_hint, err_console, handle_errors, missing_root_hint, people_to_stderr, print_json, rich_table,
    set_options,
)

PlanOpt = Annotated[bool, typer.Option("--dry-run", metavar="", help="Print the plan (each search's settings and "
                                                                     "status) and what the runs would refuse at "
                                                                     "their start, then exit.")]


def table3(rows: list[dict]) -> FittedTable:
    from ..runs.tables import table3_columns, table3_display

    metrics = sorted({r["error_metric"] for r in rows if not r["published"] and r["error_metric"]})
    columns = [c for c in table3_columns(rows) if c[0] != "error_metric"]
    return rich_table(
        "Table 3: ablation (A = efficient search space, B = DCSS, C = entropy regularisation)",
        columns, table3_display(rows),
        caption=f"Error: measured rows = {' / '.join(metrics) or '-'} (mean ± std over seeds); "
                "published rows are quoted from the EL-DARTS paper (CIFAR-10 test error, 3 runs, GPU-days on a "
                "GTX 1080 Ti), not measured here. skip = skip_connect edges of the normal cell; H(α) = mean edge "
                "entropy of the final normal-cell softmax(α), nats; margin = median op margin of each run's cell "
                "(chosen op's weight minus the runner-up's); agree = share of kept edges / ops the seeds' "
                "genotypes have in common (mean over pairs).",
    )


def _marks(components: dict) -> str:
    return "  ".join(f"{c} {'✓' if on else '✗'}" for c, on in components.items())


class _AblationProgress:
    """One transient progress bar per run's epoch, one line per finished run."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def run_start(self, run, index, total, resuming):
        device = run.recipe.runtime.device
        self.progress.console.print(
            f"[{index + 1}/{total}] {run.id}: {_marks(run.components)}  seed {run.seed}"
            + (f"  on {device}" if device != "auto" else "") + ("  (resuming)" if resuming else ""),
            highlight=False, markup=False)

    def run_skipped(self, run, index, total):
        self.progress.console.print(f"[{index + 1}/{total}] {run.id}: finished earlier, skipped",
                                    highlight=False, markup=False)

    def run_elsewhere(self, run, index, total, holder):
        from ..runs.ablation import describe_holder

        self.progress.console.print(f"[{index + 1}/{total}] {run.id}: running in another process "
                                    f"({describe_holder(holder)}), left to it", highlight=False, markup=False)

    def run_end(self, run, record):
        if record.status == "finished":
            self.progress.console.print(f"  [green]finished[/] {escape(str(run.folder))}", highlight=False)
        elif (run.folder / "error.txt").exists():
            self.progress.console.print(
                f"  [red]failed[/] {escape(run.id)}: {escape(record.error or '')}  "
                f"(in {escape(str(run.folder / 'error.txt'))})", highlight=False)
        else:
            self.progress.console.print(f"  [red]stopped[/] {escape(run.id)}: {escape(record.error or '')}  "
                                        "(its last checkpoint is kept for --resume)", highlight=False)

    def search_callbacks(self, run):
        progress, label = self.progress, run.id

        class Epochs:
            task = None

            def epoch_start(self, epoch, epochs, steps):
                if self.task is not None:
                    progress.remove_task(self.task)
                self.task = progress.add_task(f"  {label} epoch {epoch + 1}/{epochs}", total=steps)

            def step(self, step):
                progress.update(self.task, completed=step)

            def epoch_end(self, row):
                if self.task is not None:
                    progress.remove_task(self.task)
                    self.task = None

        return Epochs()


def register(app: typer.Typer) -> None:
    app.command()(ablate)


DevicesOpt = Annotated[
    Optional[str],
    typer.Option("--devices", help="Run searches concurrently, one per device: cuda:0,cuda:1 (cpu,cpu works too).",
                 show_default=False, metavar="DEVICE,DEVICE..."),
]
ShardOpt = Annotated[
    Optional[str],
    typer.Option("--shard", help="Run only part I of N of the plan (1/2, 2/2...): N machines share one --out folder.",
                 show_default=False, metavar="I/N"),
]


def print_missing(out: Path, state) -> list[str]:
    """Say which runs Table 3 still lacks, and why."""
    from ..runs.ablation import missing_runs

    lines = missing_runs(out, state)
    if lines:
        console.print(f"[yellow]Table 3 lacks {len(lines)} of {len(state.runs)} runs[/] (built from the others):",
                      highlight=False)
        for line in lines:
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    return lines


@handle_errors
def ablate(
    recipe: RecipeArg,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    set_: SetOpt = None,
    devices: DevicesOpt = None,
    shard: ShardOpt = None,
    dry_run: PlanOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run the ablation of paper Table 3: one search per row and seed, then the table.

    --set keys naming an ablation field (seeds, rows, b_off...) change the ablation;
    any other key (search.epochs=2, runtime.threads=1) is applied to every search.
    --devices runs one search per device at once; --shard I/N runs every N-th
    search (N machines or shells sharing one --out; no run is ever run twice).
    """
    from ..config.ablate import load_ablation
    from ..config.search import sampling_warning
    from ..engines.ablate import (
        check_ablation_dir, check_existing, check_recipe_devices, check_runs_cost, check_runs_data, check_runs_start,
        eval_recipe,
        parse_devices, parse_shard, DIVERGED_RETRY, plan_ablation, priced_network_warning, refuse_torchrun,
        run_ablation, run_diverged, run_status, select_shard,
    )
    from ..runs.folders import default_run_dir
    from ..runs.tables import ablation_table

    refuse_torchrun()  # (its dry run too; each process printed the folder before the run refused)
    sets = list(set_ or [])
    cfg = load_ablation(recipe, sets)
    part = parse_shard(shard)
    device_list = parse_devices(devices)
    check_out_and_resume(out, resume)
    out = Path(resume or out or default_run_dir(cfg.name))
    planned = plan_ablation(cfg, out)
    warned = [(run.id, warning) for run in planned if (warning := sampling_warning(run.recipe))]
    if warned:
        err_console.print(f"[bold yellow]warning:[/] {len(warned)} of {len(planned)} searches "
                          f"({', '.join(ident for ident, _ in warned[:4])}{', ...' if len(warned) > 4 else ''}): "
                          f"{escape(warned[0][1])}", highlight=False, soft_wrap=True)
    if part is not None and not select_shard(planned, part):  # (it ran nothing, exit 0, without a word)
        err_console.print(f"[bold yellow]warning:[/] shard {part[0]}/{part[1]} holds no run: the plan has "
                          f"{len(planned)}, one shard each at most (--shard I/{len(planned)} or fewer shards)",
                          highlight=False, soft_wrap=True)
    if device_list is None:  # the recipe's device, before the folder line (a dry run: plans for another machine)
        check_recipe_devices([run for _, run in select_shard(planned, part)], planning=dry_run)
    again = command_line("ablate", recipe, "--resume", out, *set_options(sets),
                         *(["--devices", devices] if devices else []), *(["--shard", shard] if part else []))
    if not dry_run:  # (a dry run warns of them, with the data's problems)
        check_runs_cost([run for _, run in select_shard(planned, part)])
    if warning := priced_network_warning(planned, eval_recipe(cfg)):
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if cfg.evaluate is not None and (warning := eval_recipe(cfg).data.augmentation_warning()):  # (as evaluate's)
        err_console.print(f"[bold yellow]warning:[/] evaluation recipe {escape(str(cfg.evaluate.recipe))}: "
                          f"{escape(warning)}", highlight=False, soft_wrap=True)
    if dry_run:
        runs = [run for _, run in select_shard(planned, part)]
        check_runs_data(runs)  # what the searches would fail on at their start: said
        check_ablation_dir(out, planned, resume is not None, join=part is not None)
        check_existing(planned, eval_recipe(cfg))  # runs made with another recipe: refused, as the run refuses them
        plan = [{"id": r.id, "row": r.row, **r.components, "seed": r.seed, "sweep_value": r.sweep_value,
                 "folder": str(r.folder),
                 "ops": r.recipe.search_space.ops, "edge_coefficients": r.recipe.edge_coefficients.model_dump(),
                 "entropy": r.recipe.entropy.enabled,
                 "status": run_status(r.folder, cfg.evaluate is not None)} for r in runs]
        if json_:
            print_json({"ablation": cfg.model_dump(mode="json"), "runs": plan})
            return
        table = Table(title=Text(f"{len(runs)} searches into {out}" + (f" (shard {shard})" if part else "")),
                      title_justify="left")
        sweep = [cfg.sweep.key] if cfg.sweep is not None else []
        for heading in ("run", "A", "B", "C", "seed", *sweep, "ops", "edge coefficients", "entropy", "status"):
            table.add_column(heading)
        for p in plan:
            ec = p["edge_coefficients"]
            table.add_row(p["id"], *("✓" if p[c] else "✗" for c in "ABC"), str(p["seed"]),
                          *([f"{p['sweep_value']:g}"] if sweep else []), str(len(p["ops"])),
                          f"{ec['init']} (DCSS)" if p["B"] else (f"{ec['init']} (PC-DARTS)" if ec["enabled"] else "off"),
                          "on" if p["entropy"] else "off", p["status"])
        console.print(FittedTable(table))
        console.print("evaluation: " + (str(cfg.evaluate.recipe) if cfg.evaluate else "off (error = search val error)"))
        return
    # what the ablation refuses of its folder, before the folder line (it printed "ablation folder: X (resuming)",
    # then "cannot resume: X holds a search run")
    check_ablation_dir(out, planned, resume is not None, join=part is not None)
    with missing_root_hint(planned[0].recipe.data.root if resume is not None else None, again):
        check_runs_start([run for _, run in select_shard(planned, part)])  # (after the folder's: the first to fix)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                        TimeElapsedColumn(), console=console, transient=True)
    (err_console if json_ else console).print(
        f"ablation folder: [bold]{out}[/]" + ("  (resuming)" if resume else "")
        + (f"  shard {shard}" if part else "") + (f"  on {', '.join(device_list)}" if device_list else ""))
    with people_to_stderr(json_), continue_hint(again), progress:  # with --json, stdout holds the JSON alone
        state = run_ablation(cfg, out, resume=resume is not None, recipe_path=Path(recipe),
                             callbacks=_AblationProgress(progress), devices=device_list, shard=part)
    rows = ablation_table(out)
    mine = {run.id for _, run in select_shard(planned, part)}
    if json_:
        from ..runs.ablation import missing_runs

        print_json({"state": state.dump(), "table3": rows, "missing": missing_runs(out, state)})
    else:
        console.print(table3(rows))
        # (it said "figures: eldarts report OUT" beside the figures it had drawn)
        figures = (f"figures in {out / 'figures'}" if cfg.figures and (out / "figures").is_dir()
                   else f"figures: {command_line('report', out)}")
        console.print(f"written: {out / 'table3.csv'}, {out / 'table3.md'}  ({figures})", soft_wrap=True)
        print_missing(out, state)
    # This command answers for its own runs; another shard's, still running or failed, are its own.
    failed = [r for r in state.runs if r.id in mine and r.status == "failed"]
    stopped = [r for r in state.runs if r.id in mine and r.status in ("partial", "pending")]
    if failed or stopped:
        diverged = [r for r in failed if run_diverged(out / r.id)]
        failed = [r for r in failed if r not in diverged]
        parts = ([f"{len(failed)} of {len(mine)} runs failed ({', '.join(r.id for r in failed)}); each folder "
                  f"holds error.txt"] if failed else [])
        parts += [f"{len(stopped)} of {len(mine)} runs did not finish ({', '.join(r.id for r in stopped)})"] if stopped else []
        retry = f". Retry them with: {escape(again)}" if parts else ""
        if diverged:  # a resume would diverge again: the same recipe
            parts += [f"{len(diverged)} of {len(mine)} runs diverged ({', '.join(r.id for r in diverged)}): "
                      f"{DIVERGED_RETRY}"]
        err_console.print(f"[bold red]error:[/] {'; '.join(parts)}{retry}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
