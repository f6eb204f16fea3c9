"""``eldarts evaluate GENOTYPE [RECIPE]``: train a cell from scratch, compare with the paper's Tables 1-2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .cli_common import DryRunOpt, JsonOpt, OutOpt, SetOpt, console, handle_errors, print_json

GenotypeArg = Annotated[
    str,
    typer.Argument(help="genotype.json, a search run folder, or a zoo name (DARTS_V2, PC-DARTS, ...).", show_default=False),
]
EvalRecipeArg = Annotated[
    Optional[Path],
    typer.Argument(help="Recipe YAML (default: the paper's CIFAR-10 settings, as recipes/eval-cifar10.yaml).", show_default=False),
]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its checkpoint.")]
EvalDeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N (overrides runtime.device).")]


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate(
        genotype: GenotypeArg,
        recipe: EvalRecipeArg = None,
        set_: SetOpt = None,
        out: OutOpt = None,
        resume: ResumeOpt = None,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
        device: EvalDeviceOpt = None,
    ) -> None:
        """Train GENOTYPE from scratch (paper 3.2-3.3) and compare it with the published Tables 1 and 2."""
        from .errors import RunFolderError
        from .evaluate import EvalRecipe, describe, run_evaluation
        from .genotypes import load_genotype
        from .recipe import load_recipe

        overrides = list(set_ or []) + ([f"runtime.device={device}"] if device else [])
        resolved = load_recipe(recipe, EvalRecipe, overrides)
        cell = load_genotype(genotype)
        if dry_run:
            info = describe(resolved, cell)
            print_json(info) if json_ else _print_sizes(info)
            return
        if resume is not None and out is not None and Path(out) != Path(resume):
            raise RunFolderError(f"--out {out} and --resume {resume} name different folders; give one")
        folder = Path(resume or out or Path("runs") / f"{resolved.name}-{cell.name or 'genotype'}")
        if resume is not None and (folder / "recipe.yaml").exists():
            from .evaluate import RESUMABLE_CHANGES
            from .recipe import resume_recipe

            resolved, notes = resume_recipe(folder, EvalRecipe, resolved, overrides, RESUMABLE_CHANGES)
            if notes and _is_main_process() and not json_:
                console.print(
                    f"resuming with the run's own recipe ({folder / 'recipe.yaml'}); the recipe given differs in: "
                    + "; ".join(notes), highlight=False,
                )
        main = _is_main_process()
        report = (lambda event: None) if json_ or not main else _progress
        results = run_evaluation(resolved, cell, folder, resume=resume is not None, report=report)
        if not main:
            return
        from .report import write_eval_report

        write_eval_report(folder)  # figures and tables, as `eldarts report` writes them
        if json_:
            print_json(results)
        else:
            _print_results(results, folder)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _progress(event: dict) -> None:
    kind = event["event"]
    if kind == "start":
        console.print(
            f"[bold]training[/] {event['params_m']:.2f}M params, {event['macs_m']:.4g}M MACs (thop) on "
            f"{event['device']} x{event['world_size']}, amp={event['amp']}, channels_last={event['channels_last']}; "
            f"epochs {event['start_epoch'] + 1}-{event['epochs']}, {event['steps_per_epoch']} steps each",
            highlight=False,
        )
    elif kind == "epoch":
        test = f"  test top-1 {event['test_top1']:.2f}%  top-5 {event['test_top5']:.2f}%" if "test_top1" in event else ""
        console.print(
            f"epoch {event['epoch']:>4}  lr {event['lr']:.5f}  loss {event['train_loss']:.4f}  "
            f"train top-1 {event['train_top1']:.2f}%{test}  {event['images_per_s']:.1f} img/s  "
            f"{event['epoch_time_s']:.1f}s",
            highlight=False,
        )


def _print_sizes(info: dict) -> None:
    import yaml

    console.print(yaml.safe_dump(info["recipe"], sort_keys=False).rstrip(), highlight=False, markup=False)
    table = Table(title=f"{info['genotype']} as a {info['network']} network (not trained)", show_header=False)
    table.add_row("cells x channels", f"{info['layers']} x {info['channels']}")
    table.add_row("input", "x".join(map(str, info["input_size"])) + f", {info['num_classes']} classes")
    table.add_row("params (M, no aux head)", f"{info['params_m']:.3f}")
    table.add_row("params (M, with aux head)", f"{info['params_with_aux_m']:.3f}")
    table.add_row("MACs (M, thop)", f"{info['macs_m']:.1f}")
    table.add_row("MACs (M, conv+FC only)", f"{info['macs_conv_fc_m']:.1f}")
    if "exceeds_mobile_limit" in info:
        verdict = "[red]over[/] the mobile limit" if info["exceeds_mobile_limit"] else "within the mobile limit"
        table.add_row("mobile setting", f"{verdict} ({info['mobile_limit_m']:.0f}M MACs)")
    console.print(table)
    console.print(f"[dim]{info['macs_convention']}[/]")


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _as_printed(value, approx: bool = False) -> str:
    """A published figure as the paper prints it (3.3, 3.17, 2000, 0.075)."""
    if value is None:
        return "-"
    return f"{'~' if approx else ''}{value:g}"


def comparison_table(results: dict) -> Table:
    """This run's row beside the paper's published rows, in the layout of Table 1 (CIFAR) or Table 2 (ImageNet)."""
    from .published import TABLES, format_error

    kind = results.get("table")
    rows = TABLES.get(kind, ())
    imagenet = kind == "imagenet"
    title = {
        "cifar10": "Table 1 (CIFAR-10): published rows from the EL-DARTS paper, and this run",
        "imagenet": "Table 2 (ImageNet, mobile setting): published rows from the EL-DARTS paper, and this run",
    }.get(kind, f"this run ({results['dataset']}; the paper has no table for it)")
    table = Table(title=title)
    table.add_column("Architecture")
    if imagenet:
        table.add_column("Top-1 err (%)", justify="right")
        table.add_column("Top-5 err (%)", justify="right")
    else:
        table.add_column("Test err (%)", justify="right")
    table.add_column("Params (M)", justify="right")
    if imagenet:
        table.add_column("MACs (M)", justify="right")
    table.add_column("Search cost (GPU days)", justify="right")
    if not imagenet:
        table.add_column("#ops", justify="right")
    table.add_column("Method")
    table.add_column("Source")
    for row in rows:
        cells = [row.architecture + (f" {row.citation}" if row.citation else "")]
        cells.append(format_error(row.top1_error, row.top1_error_std))
        if imagenet:
            cells.append(_as_printed(row.top5_error))
        cells.append(_as_printed(row.params_m, row.params_approx))
        if imagenet:
            cells.append(_as_printed(row.macs_m))
        cells.append(_as_printed(row.search_cost_gpu_days))
        if not imagenet:
            cells.append(_as_printed(row.num_ops))
        cells += [row.method, "[dim]published[/]"]
        table.add_row(*cells)
    ours = [f"[bold]{results['genotype']}[/] (this run)", _fmt(results.get("test_top1_error"))]
    if imagenet:
        ours.append(_fmt(results.get("test_top5_error")))
    ours.append(_fmt(results["params_m"]))
    if imagenet:
        ours.append(f"{results['macs_m']:.0f} (thop)")
    ours.append("-")
    if not imagenet:
        ours.append("-")
    epochs = results["epochs"]
    ours += ["trained here", f"[bold green]measured[/], {epochs} epoch{'s' if epochs != 1 else ''}"]
    table.add_section()
    table.add_row(*ours)
    return table


def _print_results(results: dict, folder: Path) -> None:
    console.print(comparison_table(results))
    notes = [f"run folder: {folder}", f"wall time {results['wall_time_s'] / 60:.1f} min on {results['device']} x{results['world_size']}"]
    if results.get("exceeds_mobile_limit"):
        notes.append(f"[red]{results['macs_m']:.0f}M MACs exceeds the {results['mobile_limit_m']:.0f}M mobile limit[/]")
    if results["dataset"] == "imagefolder" and results.get("table") == "cifar10":
        notes.append("images from an ImageFolder tree (e.g. the JPEG copy of CIFAR-10): errors are close to, "
                     "not identical with, those on the original CIFAR-10 files")
    if results.get("onnx") is None and "onnx" in results:
        notes.append("[yellow]ONNX export failed; weights.pt holds the trained network[/]")
    console.print("[dim]" + "; ".join(notes) + "[/]")
