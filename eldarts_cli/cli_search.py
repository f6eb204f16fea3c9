"""``eldarts search RECIPE``: run an EL-DARTS search into a run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.table import Table

from .cli_common import DeviceOpt, DryRunOpt, JsonOpt, OutOpt, RecipeArg, SetOpt, console, handle_errors, print_json
from .genotypes import Genotype


def genotype_table(genotype: Genotype, title: str = "Discovered cells") -> Table:
    """Normal and reduction cell side by side: node, op <- input (as in paper Figure 4)."""
    table = Table(title=title, title_justify="left")
    table.add_column("node", justify="right")
    table.add_column("normal cell")
    table.add_column("reduction cell")
    names = lambda i: {0: "c_{k-2}", 1: "c_{k-1}"}.get(i, f"node {i - 2}")  # noqa: E731
    for node in range(genotype.nodes):
        cells = []
        for edges in (genotype.normal, genotype.reduce):
            pair = edges[2 * node : 2 * node + 2]
            cells.append("\n".join(f"{op} <- {names(src)}" for op, src in pair))
        table.add_row(str(node), *cells)
    table.add_row("out", f"concat {genotype.normal_concat}", f"concat {genotype.reduce_concat}")
    return table


class RichSearchCallbacks:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.epochs = 0
        self.epoch_times: list[float] = []

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps)

    def step(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def epoch_end(self, row: dict) -> None:
        t = row["temperature"]
        self.progress.console.print(
            f"epoch {row['epoch'] + 1:>3}  lr {row['lr']:.4f}  "
            f"train {row['train_loss']:.3f}/{100 * row['train_acc']:.1f}%  "
            f"val {row['val_loss']:.3f}/{100 * row['val_acc']:.1f}%  "
            f"H {row['entropy_normal']:.3f}  skip {row['skip_normal']}  "
            + (f"T {t:.2f}  " if t is not None else "")
            + ("" if row["arch_updates"] else "(warm-up)  ")
            + f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
            + self._eta(row),
            highlight=False,
        )

    def _eta(self, row: dict) -> str:
        """Time left for the whole search, from the mean epoch time of this session."""
        self.epoch_times.append(row["epoch_seconds"])
        left = self.epochs - row["epoch"] - 1
        if left <= 0:
            return ""
        seconds = left * sum(self.epoch_times) / len(self.epoch_times)
        return f"  (search eta {seconds / 60:.1f} min)" if seconds >= 60 else f"  (search eta {seconds:.0f}s)"


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def search(
        recipe: RecipeArg,
        set_: SetOpt = None,
        out: OutOpt = None,
        resume: Annotated[
            Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.")
        ] = None,
        dry_run: DryRunOpt = False,
        json_: JsonOpt = False,
        device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N (overrides runtime.device).")] = None,
    ) -> None:
        """Search a cell architecture with EL-DARTS; leaves genotype.json and metrics in a run folder."""
        from .data import dataset_shape
        from .recipe import SearchRecipe, load_recipe, recipe_to_dict, recipe_yaml
        from .runs import prepare_run_dir
        from .search import Searcher, resume_recipe, supernet_summary

        overrides = list(set_ or [])
        if device:
            overrides.append(f"runtime.device={device}")
        cfg = load_recipe(recipe, SearchRecipe, overrides)
        if dry_run:
            channels, classes = dataset_shape(cfg.data)
            sizes = supernet_summary(cfg, channels, classes)
            if json_:
                print_json({"recipe": recipe_to_dict(cfg), "supernet": sizes})
                return
            console.print(Syntax(recipe_yaml(cfg), "yaml", theme="ansi_dark", background_color="default"))
            console.print(
                f"supernet: {sizes['cells']} cells (reductions at {sizes['reduction_cells']}), "
                f"{sizes['edges_per_cell']} edges x {len(sizes['ops'])} ops, "
                f"{sizes['weight_params_m']:.3f}M weights, {sizes['arch_params']} architecture parameters "
                f"(for {channels}-channel input, {classes} classes)"
            )
            return
        if resume is not None and out is not None and Path(out) != Path(resume):
            from .errors import RunFolderError

            raise RunFolderError("give either --out (new run) or --resume (existing run), not both")
        target = Path(resume or out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        created = resume is None and not target.exists()
        run_dir = prepare_run_dir(target, resume=resume is not None)
        console.print(f"run folder: [bold]{run_dir}[/]" + ("  (resuming)" if resume else ""))
        if resume is not None:
            cfg, notes = resume_recipe(run_dir, cfg, overrides)
            if notes:
                console.print(
                    f"resuming with the run's own recipe ({run_dir / 'recipe.yaml'}); {recipe} differs in: "
                    + "; ".join(notes), highlight=False,
                )
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
        )
        with progress:
            try:
                searcher = Searcher(cfg, run_dir, resume=resume is not None, callbacks=RichSearchCallbacks(progress))
            except BaseException:
                if created and not any(run_dir.iterdir()):
                    run_dir.rmdir()  # leave nothing behind for a run that never started
                raise
            if searcher.start_epoch:
                console.print(f"resuming at epoch {searcher.start_epoch + 1} of {cfg.search.epochs}")
            try:
                genotype = searcher.run()
            except KeyboardInterrupt:
                console.print(
                    f"[yellow]interrupted[/]: the last finished epoch is saved; continue with\n"
                    f"  eldarts search {recipe} --resume {run_dir}"
                )
                raise
        summary = searcher.summary(genotype)
        _write_figures(run_dir)
        console.print(genotype_table(genotype))
        cost = summary["search_cost"]
        console.print(
            f"search cost: {cost['hours']:.4f} {cost['unit'].split('-')[0]}-hours = {cost['days']:.5f} {cost['unit']} "
            f"on {summary['device']} (measured wall time)"
        )
        console.print(f"genotype: {run_dir / 'genotype.json'}  (eldarts evaluate {run_dir})")


def _write_figures(run_dir: Path) -> None:
    """Figures and tables of the run, as ``eldarts report`` writes them."""
    from .report import write_search_report

    write_search_report(run_dir)
