"""``eldarts evaluate GENOTYPE [RECIPE]``: train a cell from scratch, compare with the paper's Tables 1-2."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .common import (
    DeviceOpt, DryRunOpt, FittedTable, JsonOpt, OutOpt, ResumeOpt, SetOpt, check_out_and_resume, command_line,
    console, continue_hint, drawing_figures, err_console, handle_errors, missing_root_hint, on_every_rank,
    overrides_with_device, people_to_stderr, print_json, print_resume_notes, printing_results, redraw_missing_figures,
    resume_or_restart, rich_table, set_options, start_anew_hint, user_path, warn_not_applied,
)

GenotypeArg = Annotated[
    str,
    typer.Argument(help="genotype.json, a search run folder, a zoo name (DARTS_V2, PC-DARTS, ...), or a "
                  "NAS-Bench-201 arch string (|nor_conv_3x3~0|+|...|).", show_default=False, metavar="GENOTYPE",
                  parser=os.path.expanduser),  # (~/runs/c10: a leading ~ alone; an arch string has none)
]
EvalRecipeArg = Annotated[
    Optional[Path],
    typer.Argument(help="Recipe YAML (default: the paper's CIFAR-10 settings, as recipes/eval-cifar10.yaml).",
                   show_default=False, parser=user_path, metavar="RECIPE"),
]


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


@handle_errors(restartable=True)
def evaluate(
    genotype: GenotypeArg,
    recipe: EvalRecipeArg = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Train GENOTYPE from scratch (paper 3.2-3.3) and compare it with the published Tables 1 and 2.

    Data-parallel over N processes: torchrun --nproc_per_node N -m eldarts_cli evaluate GENOTYPE RECIPE
    (data.batch_size is the global batch; rank 0 reports and writes).
    """
    on_every_rank(lambda dist: _evaluate(dist, genotype, recipe, set_, out, resume, dry_run, json_, device))


def _evaluate(dist, genotype, recipe, set_, out, resume, dry_run: bool, json_: bool, device) -> None:
    from ..config.base import load_given_recipe, resume_recipe
    from ..config.evaluate import RESUMABLE_CHANGES, EvalRecipe
    from ..core.device import compile_warning
    from ..core.errors import GenotypeError
    from ..engines.evaluate import check_eval_data, check_resumed_genotype, describe, resume_state, run_evaluation
    from ..engines.export import restore_onnx, restore_weights
    from ..api import load_genotype
    from ..models.nb201 import NB201Genotype
    from ..runs.figures import write_eval_report
    from ..runs.files import EvalResults, search_run_of
    from ..engines.finite import not_learning
    from ..runs.folders import check_run_dir, default_run_dir, prepare_run_dir, read_metrics, remove_unused_run_dir

    given = Path(genotype)
    if recipe is not None and not Path(recipe).exists() and given.suffix.lower() in (".yaml", ".yml") \
            and given.is_file():  # (it said "recipe DARTS_V2 does not exist")
        raise GenotypeError(f"{given} is a recipe and comes second: the genotype comes first "
                            f"({command_line('evaluate', recipe, given)})")
    overrides = overrides_with_device(set_, device)
    resolved = load_given_recipe(recipe, EvalRecipe, overrides, Path(resume) if resume else None)
    if warning := compile_warning(resolved.runtime.compile, resolved.runtime.device):
        warnings.warn(warning)
    if warning := resolved.data.augmentation_warning():
        warnings.warn(warning)
    cell = load_genotype(genotype)
    if isinstance(cell, NB201Genotype) and cell.not_in_benchmark():
        warnings.warn(cell.not_in_benchmark())
    elif not isinstance(cell, NB201Genotype) and (note := cell.unused_nodes_note()):
        warnings.warn(f"{genotype}: {note}")
    origin = search_run_of(genotype, cell)
    if origin is None and (run := search_run_of(genotype)) is not None:
        warnings.warn(f"{genotype} is none of the cells the search in {run} derived (edited by hand?): this "
                      "evaluation does not take that search's cost or op count")
    check_out_and_resume(out, resume)
    folder = Path(resume or out or default_run_dir(resolved.name, cell.name or "genotype"))
    main = dist.is_main
    from .search import torchrun_prefix

    launch = torchrun_prefix(dist) if dist.enabled else None  # (in commands a hint names: the same launch)
    # asked by rank 0 alone: a peer rank saw rank 0's own lock as another process's, and, asking while rank 0 made
    # the folder, took it for a folder of the user's ("not empty"); rank 0's refusal stops them all
    if main:
        check_run_dir(folder, resume=resume is not None, kind="evaluation", busy=True)
    if resume is not None:
        check_resumed_genotype(folder, cell)
    if dry_run:
        if dist.enabled:  # what the run refuses at its start under this launch
            from ..engines.distributed import check_global_batches

            check_global_batches(resolved.data, dist.world_size)
        if resume is not None:  # the plan of what --resume runs: the run's own recipe, with this --set
            said = err_console if json_ else console  # (with --json, stdout holds the plan alone)
            if EvalResults.exists(folder) and EvalResults.read(folder).completed:
                said.print(f"{folder}: this evaluation has finished; nothing to resume. Results: "
                              f"{EvalResults.path(folder)}", highlight=False)
                warn_not_applied(folder, EvalRecipe, recipe, set_, "evaluation", "train again")
                if json_:  # what the resume would print: the finished evaluation's results (stdout was empty)
                    print_json(EvalResults.read(folder).dump())
                return
            notes = []
            if (folder / "recipe.yaml").exists():
                resolved, notes = resume_recipe(folder, EvalRecipe, resolved, overrides, RESUMABLE_CHANGES)
            with start_anew_hint(folder, "evaluation", launch):
                resume_state(folder, resolved, cell, dist.world_size)  # what the resume refuses of its checkpoint
            print_resume_notes(said, folder, "the recipe given", notes)
        info = describe(resolved, cell)  # first: a genotype the network cannot take is the error to read
        check_eval_data(resolved)  # what the run would refuse at its start, without loading the data (missing: said)
        print_json(info) if json_ else _print_sizes(info)
        return
    with people_to_stderr(json_):  # with --json, stdout holds the JSON alone (progress and tables: stderr)
        if resume is not None and EvalResults.exists(folder) and EvalResults.read(folder).completed:
            if main:
                console.print(f"{folder}: this evaluation has finished; nothing to resume. Results: "
                              f"{EvalResults.path(folder)}  ({command_line('report', folder)})", markup=False)
                warn_not_applied(folder, EvalRecipe, recipe, set_, "evaluation", "train again")
                if restore_weights(folder):  # (deleted: load_trained failed, and nothing wrote it again)
                    console.print(f"weights.pt was missing: written again from {folder / 'checkpoint.pt'}",
                                  highlight=False, markup=False)
                if restore_onnx(folder):  # (results.json named a file that was not there)
                    console.print(f"{EvalResults.read(folder).onnx} was missing: exported again from "
                                  f"{folder / 'weights.pt'}", highlight=False, markup=False)
                redraw_missing_figures(folder, write_eval_report, "evaluation")
                if json_:
                    print_json(EvalResults.read(folder).dump())
            return
        notes = []
        if resume is not None and (folder / "recipe.yaml").exists():
            resolved, notes = resume_recipe(folder, EvalRecipe, resolved, overrides, RESUMABLE_CHANGES)

        def report(event: dict) -> None:  # (a resume's notes once the run accepted its checkpoint: at its start)
            if not main:
                return
            if event["event"] == "start" and notes:
                print_resume_notes(console, folder, "the recipe given", notes)
                notes.clear()
            _progress(event)

        resume_line = command_line("evaluate", genotype, recipe, "--resume", folder)
        restart_line = command_line("evaluate", genotype, recipe, "--out", folder, *set_options(overrides))
        if dist.enabled:  # the same launch again: an evaluation resumes on as many processes as it ran on
            resume_line, restart_line = (line.replace("eldarts", launch, 1)
                                         for line in (resume_line, restart_line))
        again = resume_or_restart(folder, resume_line, restart_line)
        with contextlib.ExitStack() as held:  # the run folder's lock, while this command runs it
            with continue_hint(again):
                try:
                    if main:  # made (or checked) and locked before anything in it is touched
                        prepare_run_dir(folder, resume=resume is not None, kind="evaluation", hold=held)
                    with missing_root_hint(resolved.data.root if resume is not None else None, resume_line), \
                            start_anew_hint(folder, "evaluation", launch):
                        results = run_evaluation(resolved, cell, folder, resume=resume is not None, report=report,
                                                 search_run=origin, dist=dist)
                except BaseException:
                    if main:
                        remove_unused_run_dir(folder)  # leave nothing behind for a run that never started
                    raise
            if not main:
                return
            with drawing_figures(folder, "evaluation"):  # stopped or a full disk there: the results are saved
                write_eval_report(folder)  # figures and tables, as `eldarts report` writes them
        with printing_results(folder, "evaluation"):
            final = EvalResults.read(folder)
            _print_results(final, folder, onnx_wanted=resolved.train.onnx)
            last = (read_metrics(folder) or [{}])[-1]
            aux = resolved.network.auxiliary_weight if resolved.network.auxiliary else 0.0
            if warning := not_learning(last.get("train_loss"), final.num_classes, resolved.optim.lr, aux):
                warnings.warn(warning)
            if json_:
                print_json(results)


def _progress(event: dict) -> None:
    kind = event["event"]
    if kind == "start":
        from ..runs.tables import fmt_count

        first, last = event["start_epoch"] + 1, event["epochs"]
        span = (f"epochs {first}-{last}, {event['steps_per_epoch']} steps each" if first < last
                else f"epoch {last}, {event['steps_per_epoch']} steps" if first == last
                else "every epoch was trained before: the final test remains")  # stopped after the last checkpoint
        console.print(
            f"[bold]training[/] {fmt_count(event['params_m'])}M params, {event['macs_m']:.4g}M MACs (thop) on "
            f"{event['device']} x{event['world_size']}, amp={event['amp']}, channels_last={event['channels_last']}; "
            f"{span}",
            highlight=False,
        )
    elif kind == "checking":
        console.print(f"reading the {event['images']:,} test images once before training (a file that cannot be "
                      "decoded stops the run now, not after the first epoch)", highlight=False)
    elif kind == "epoch":
        top5 = f"  top-5 {event['test_top5']:.2f}%" if event.get("test_top5") is not None else ""
        test = f"  test top-1 {event['test_top1']:.2f}%{top5}" if event.get("test_top1") is not None else ""
        if event.get("ema_test_top1") is not None:  # (train.ema: the averaged weights, tested alike)
            test += f"  EMA {event['ema_test_top1']:.2f}%"
        console.print(
            f"epoch {event['epoch']:>4}  lr {event['lr']:.5f}  loss {event['train_loss']:.4f}  "
            f"train top-1 {event['train_top1']:.2f}%{test}  {event['images_per_s']:.1f} img/s  "
            f"{event['epoch_time_s']:.1f}s",
            highlight=False,
        )


def _print_sizes(info: dict) -> None:
    import yaml

    from ..core.device import format_bytes

    console.print(yaml.safe_dump(info["recipe"], sort_keys=False).rstrip(), highlight=False, markup=False)
    kind = {"cifar": "a CIFAR", "imagenet": "an ImageNet", "nb201": "a NAS-Bench-201"}.get(info["network"],
                                                                                      f"a {info['network']}")
    table = Table(title=Text(f"{info['genotype']} as {kind} network (not trained)"), show_header=False)
    table.add_row("cells x channels", f"{info['layers']} x {info['channels']}")
    table.add_row("input", "x".join(map(str, info["input_size"])) + f", {info['num_classes']} classes")
    table.add_row("params (M, no aux head)", f"{info['params_m']:.4f}")  # (as kept: 1.2885 printed as 1.288)
    table.add_row("params (M, with aux head)", f"{info['params_with_aux_m']:.4f}")
    table.add_row("MACs (M, thop)", f"{info['macs_m']:.4g}")
    table.add_row("MACs (M, conv+FC only)", f"{info['macs_conv_fc_m']:.4g}")
    table.add_row(f"training memory at batch {info['recipe']['data']['batch_size']}",
                  f"about {format_bytes(info['estimated_training_memory_bytes'])} (estimated"
                  + (f", {info['estimated_training_amp']} activations)" if info["estimated_training_amp"] != "none"
                     else ")"))
    if "exceeds_mobile_limit" in info:
        verdict = "[red]over[/] the mobile limit" if info["exceeds_mobile_limit"] else "within the mobile limit"
        table.add_row("mobile setting", f"{verdict} ({info['mobile_limit_m']:.0f}M MACs)")
    console.print(FittedTable(table))
    console.print(f"[dim]{info['macs_convention']}[/]")


def comparison_table(results) -> FittedTable:
    """This run's row beside the paper's published rows: Table 1 (CIFAR) or Table 2 (ImageNet)."""
    from ..runs.tables import evaluation_table

    title, columns, rows = evaluation_table(results)
    return rich_table(title, columns, rows)


def _print_results(results, folder: Path, onnx_wanted: bool) -> None:
    from ..runs.tables import fmt_duration

    console.print(comparison_table(results))
    if results.ema_test_top1_error is not None:  # (the table's row is the network's own weights)
        top5 = (f", top-5 {results.ema_test_top5_error:.2f}%" if results.ema_test_top5_error is not None else "")
        console.print(f"EMA weights (train.ema; in weights.pt beside the network's): test error "
                      f"{results.ema_test_top1_error:.2f}%{top5}; the table's row is the network's own weights",
                      highlight=False)
    notes = [f"run folder: {escape(str(folder))}", f"training wall time {fmt_duration(results.wall_time_s)} (the "
             f"epochs', over every resume) on {escape(results.device)} x{results.world_size}"]
    if results.exceeds_mobile_limit:
        notes.append(f"[red]{results.macs_m:.0f}M MACs exceeds the {results.mobile_limit_m:.0f}M mobile limit[/]")
    if results.dataset == "imagefolder" and results.table in ("cifar10", "nb201"):
        notes.append("images from an ImageFolder tree (e.g. the JPEG copy of CIFAR-10): errors are close to, "
                     "not identical with, those on the original CIFAR-10 files")
    if results.onnx is None and onnx_wanted:
        notes.append("[yellow]ONNX export failed; weights.pt holds the trained network[/]")
    console.print("[dim]" + "; ".join(notes) + "[/]")
