"""``eldarts report FOLDER [FOLDER ...]``: the paper's figures (3, 4, curves) and tables (1-3) for a run
folder; several search runs side by side with their genotypes' agreement."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import (
    PUBLISHED_CAPTION, JsonOpt, console, genotype_table, handle_errors, margins_line, print_json, rich_table,
    run_folder,
)


#: What a measured row's search cost is (it read "this run's wall time": the command took several times as long).
MEASURED_COST = ("the measured search cost is the search epochs' wall time, and perturbation selection's in the rows "
                 "of cells it chose (setup and data decoding excluded)")


def _percent(share: float) -> str:
    """``62.5%`` -> "63%": halves rounded up (format's half-to-even gave 62% for 0.625 and 88% for 0.875)."""
    return f"{math.floor(100 * share + 0.5)}%"


def register(app: typer.Typer) -> None:
    app.command()(report)


NB201_CAPTION = "published rows: NAS-Bench-201 (Dong & Yang, ICLR 2020), not measured here"


@handle_errors(restartable="the figures and tables may be part-drawn; draw them again with")
def report(
    folders: Annotated[list[Path], typer.Argument(
        help="A search run, evaluation run or ablation folder; or several search runs (e.g. seeds) to compare.",
        show_default=False, parser=run_folder, metavar="FOLDER")],
    json_: JsonOpt = False,
) -> None:
    """Write the paper's figures (3, 4, curves) and tables (1-3) for a run folder; compare several searches."""
    from ..core.errors import RunFolderError
    from ..runs.figures import (FIGURES, check_figures_ours, check_search_logs, figures_drawn, write_ablation_report,
                                write_eval_report, write_search_report)
    from ..runs.files import EvalResults, SearchSummary
    from ..runs.folders import check_report_targets, folder_kind, require_kind
    from ..runs.tables import (
        NB201_COLUMNS, RUNS_COLUMNS, TABLE1_COLUMNS, ablation_table, evaluation_table, json_rows, nb201_rows,
        search_runs_table, table1_rows,
    )
    from .ablate import table3

    if len(folders) > 1:
        seen: dict[Path, Path] = {}
        for folder in folders:
            first = seen.setdefault(folder.resolve(), folder)
            if first is not folder:
                same = (f"'{folder}' is given twice" if str(first) == str(folder)
                        else f"'{first}' and '{folder}' are the same folder")
                raise RunFolderError(f"{same}; a comparison takes each search run once")
        for folder in folders:
            require_kind(folder, "search")
        for folder in folders:  # every run's files and figures checked before any is drawn
            check_search_logs(folder)
            if not figures_drawn(folder):
                check_report_targets(folder, [FIGURES])
                check_figures_ours(folder)
        # each run's own figures only where they are missing (a finished search wrote them)
        paths = [p for folder in folders if not figures_drawn(folder)
                 for p in write_search_report(folder)]
        rows, agreement = search_runs_table(folders)
        if json_:
            print_json({"kind": "searches", "written": [str(p) for p in paths], "runs": json_rows(rows),
                        "agreement": agreement})
            return
        caption = ("op margin: median over the genotype's edges of the chosen op's weight minus the runner-up's; "
                   "node margin: kept minus first dropped edge; decided: both at or above the run's threshold")
        console.print(rich_table(f"{len(folders)} searches", RUNS_COLUMNS, rows, caption=caption))
        if agreement is not None:
            console.print(
                f"genotype agreement over {agreement['runs']} runs (mean over pairs): "
                f"{_percent(agreement['edges'])} of edges, {_percent(agreement['ops'])} of ops", highlight=False)
        console.print(f"searches report: {_files(len(paths), 'figure file')} written (runs that lacked them)")
        return

    folder = folders[0]
    kind = folder_kind(folder)
    if kind == "search":
        paths = write_search_report(folder)
        summary = SearchSummary.read(folder)
        nb201 = summary.cell == "nb201"
        rows = nb201_rows(search_runs=[folder]) if nb201 else table1_rows([folder])
        if json_:
            print_json({"kind": kind, "written": [str(p) for p in paths],
                        "nb201" if nb201 else "table1": json_rows(rows),
                        "margins": None if summary.margins is None else summary.margins.model_dump()})
            return
        console.print(genotype_table(summary.genotype))
        console.print(margins_line(summary), highlight=False)
        if nb201:
            console.print(rich_table("NAS-Bench-201, CIFAR-10", NB201_COLUMNS, rows,
                                     caption=NB201_CAPTION + "; " + MEASURED_COST))
        else:
            console.print(rich_table("Table 1: CIFAR-10", TABLE1_COLUMNS, rows,
                                     caption=PUBLISHED_CAPTION + "; " + MEASURED_COST))
        if summary.cost is not None:
            from .search import print_cost_result

            print_cost_result(summary.cost)
    elif kind == "evaluation":
        paths = write_eval_report(folder)
        results = EvalResults.read(folder)
        title, columns, rows = evaluation_table(results)
        if json_:
            print_json({"kind": kind, "written": [str(p) for p in paths], "table": json_rows(rows)})
            return
        caption = (NB201_CAPTION if results.table == "nb201" else
                   PUBLISHED_CAPTION if any(r.get("published") for r in rows) else None)
        console.print(rich_table(title, columns, rows, caption=caption))
    else:
        from ..runs.ablation import missing_runs, read_ablation
        from .ablate import print_missing

        paths = write_ablation_report(folder)
        rows = ablation_table(folder)
        state = read_ablation(folder)  # from the run folders, whichever process or machine ran them
        if json_:
            print_json({"kind": kind, "written": [str(p) for p in paths], "table3": rows,
                        "missing": missing_runs(folder, state)})
            return
        console.print(table3(rows))
        print_missing(folder, state)
    console.print(f"{kind} report: {_files(len(paths))} written")
    for path in paths:  # (soft_wrap: a path wider than the terminal was broken mid-name by a newline)
        console.print(f"  {escape(str(path))}", highlight=False, soft_wrap=True)


def _files(count: int, noun: str = "file") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"  # ("1 files written")
