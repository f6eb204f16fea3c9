"""``eldarts ablate RECIPE`` (paper Table 3) and ``eldarts report FOLDER`` (Figures 3-4, Tables 1-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Sequence

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_common import DryRunOpt, JsonOpt, OutOpt, RecipeArg, SetOpt, console, err_console, handle_errors, print_json


def rich_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[dict], caption: str = "") -> Table:
    """Measured rows in bold, published rows dimmed and labelled 'published (paper)'."""
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    for key, heading in columns:
        if key == "source":  # never elided: it is what tells a published row from a measured one
            table.add_column(heading, no_wrap=True)
        else:
            table.add_column(heading, justify="center" if key in ("A", "B", "C") else "left", overflow="fold")
    for row in rows:
        style = "dim italic" if row["published"] else "bold"
        table.add_row(*(escape(str(row.get(key, ""))) for key, _ in columns), style=style)
    return table


def table3(rows: list[dict]) -> Table:
    from .ablate import table3_display
    from .report import TABLE3_COLUMNS

    metrics = sorted({r["error_metric"] for r in rows if not r["published"] and r["error_metric"]})
    display = table3_display(rows)
    for row in display:
        row["source"] = "published" if row["published"] else "measured"
    columns = [c for c in TABLE3_COLUMNS if c[0] != "error_metric"]
    return rich_table(
        "Table 3: ablation (A = efficient search space, B = DCSS, C = entropy regularisation)",
        columns, display,
        caption=f"Error: measured rows = {' / '.join(metrics) or '-'} (mean ± std over seeds); "
                "published rows are quoted from the EL-DARTS paper (CIFAR-10 test error, 3 runs, GPU-days on a "
                "GTX 1080 Ti), not measured here. skip = skip_connect edges of the normal cell; H(α) = mean edge "
                "entropy of the final normal-cell softmax(α), nats.",
    )


class _AblationProgress:
    """One transient progress bar per run's epoch, one line per finished run."""

    def __init__(self, progress: Progress, out: Path):
        self.progress = progress
        self.out = out
        self.run = None

    def run_start(self, run, index, total, resuming):
        self.run = run
        self.progress.console.print(
            f"[{index + 1}/{total}] {run.id}: A {'✓' if run.components['A'] else '✗'}  "
            f"B {'✓' if run.components['B'] else '✗'}  C {'✓' if run.components['C'] else '✗'}  seed {run.seed}"
            + ("  (resuming)" if resuming else ""), highlight=False)

    def run_skipped(self, run, index, total):
        self.progress.console.print(f"[{index + 1}/{total}] {run.id}: finished earlier, skipped", highlight=False)

    def run_end(self, run, record):
        if record["status"] == "finished":
            self.progress.console.print(f"  [green]finished[/] {escape(str(run.folder))}", highlight=False)
        else:
            self.progress.console.print(
                f"  [red]failed[/]: {escape(record.get('error', ''))}  (traceback in {escape(str(run.folder / 'error.txt'))})", highlight=False)

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
    @app.command()
    @handle_errors
    def ablate(
        recipe: RecipeArg,
        out: OutOpt = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the ablation in --out; finished runs are skipped.")] = False,
        set_: SetOpt = None,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
    ) -> None:
        """Run the ablation of paper Table 3: one search per row and seed, then the table.

        --set keys naming an ablation field (seeds, rows, b_off...) change the ablation;
        any other key (search.epochs=2, runtime.threads=1) is applied to every search.
        """
        from .ablate import ablation_table, load_ablation, plan_ablation, run_ablation, run_status

        cfg = load_ablation(recipe, list(set_ or []))
        out = Path(out) if out is not None else Path("runs") / cfg.name
        if dry_run:
            runs = plan_ablation(cfg, out)
            plan = [{"id": r.id, "row": r.row, **r.components, "seed": r.seed, "folder": str(r.folder),
                     "ops": r.recipe.search_space.ops, "edge_coefficients": r.recipe.edge_coefficients.model_dump(),
                     "entropy": r.recipe.entropy.enabled,
                     "status": run_status(r.folder, cfg.evaluate is not None)} for r in runs]
            if json_:
                print_json({"ablation": cfg.model_dump(mode="json"), "runs": plan})
                return
            table = Table(title=f"{len(runs)} searches into {out}", title_justify="left")
            for heading in ("run", "A", "B", "C", "seed", "ops", "edge coefficients", "entropy", "status"):
                table.add_column(heading)
            for p in plan:
                ec = p["edge_coefficients"]
                table.add_row(p["id"], *("✓" if p[c] else "✗" for c in "ABC"), str(p["seed"]), str(len(p["ops"])),
                              f"{ec['init']} (DCSS)" if p["B"] else (f"{ec['init']} (PC-DARTS)" if ec["enabled"] else "off"),
                              "on" if p["entropy"] else "off", p["status"])
            console.print(table)
            console.print("evaluation: " + (str(cfg.evaluate.recipe) if cfg.evaluate else "off (error = search val error)"))
            return
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                            TimeElapsedColumn(), console=console, transient=True)
        console.print(f"ablation folder: [bold]{out}[/]" + ("  (resuming)" if resume else ""))
        try:
            with progress:
                state = run_ablation(cfg, out, resume=resume, recipe_path=Path(recipe),
                                     callbacks=_AblationProgress(progress, out))
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: finished runs and checkpoints are kept; continue with\n"
                          f"  eldarts ablate {recipe} --out {out} --resume")
            raise
        rows = ablation_table(out)
        if json_:
            print_json({"state": state, "table3": rows})
        else:
            console.print(table3(rows))
            console.print(f"written: {out / 'table3.csv'}, {out / 'table3.md'}  (figures: eldarts report {out})")
        failed = [r for r in state["runs"] if r["status"] == "failed"]
        if failed:
            err_console.print(
                f"[bold red]error:[/] {len(failed)} of {len(state['runs'])} runs failed "
                f"({', '.join(r['id'] for r in failed)}); each folder holds error.txt. "
                f"Retry them with: eldarts ablate {recipe} --out {out} --resume", highlight=False)
            raise typer.Exit(1)

    @app.command()
    @handle_errors
    def report(
        folder: Annotated[Path, typer.Argument(help="A search run, evaluation run or ablation folder.", show_default=False)],
        json_: JsonOpt = False,
    ) -> None:
        """Write the paper's figures (3, 4, curves) and tables (1-3) for a run folder."""
        from .report import (
            TABLE1_COLUMNS, evaluation_table, folder_kind, read_search_genotype, table1_rows,
            write_ablation_report, write_eval_report, write_search_report,
        )

        kind = folder_kind(folder)
        if kind == "search":
            paths = write_search_report(folder)
            rows = table1_rows([folder])
            if json_:
                print_json({"kind": kind, "written": [str(p) for p in paths], "table1": rows})
                return
            from .cli_search import genotype_table

            console.print(genotype_table(read_search_genotype(folder)))
            console.print(rich_table("Table 1: CIFAR-10", TABLE1_COLUMNS, rows,
                                     caption="published (paper) rows are quoted from the EL-DARTS paper, not measured here; "
                                             "the measured search cost is this run's wall time"))
        elif kind == "evaluation":
            paths = write_eval_report(folder)
            title, columns, rows = evaluation_table(folder)
            if json_:
                print_json({"kind": kind, "written": [str(p) for p in paths], "table": rows})
                return
            console.print(rich_table(title, columns, rows,
                                     caption="published (paper) rows are quoted from the EL-DARTS paper, not measured here"))
        else:
            from .ablate import ablation_table

            paths = write_ablation_report(folder)
            rows = ablation_table(folder)
            if json_:
                print_json({"kind": kind, "written": [str(p) for p in paths], "table3": rows})
                return
            console.print(table3(rows))
        console.print(f"{kind} report: {len(paths)} files written")
        for path in paths:
            console.print(f"  {escape(str(path))}", highlight=False)
