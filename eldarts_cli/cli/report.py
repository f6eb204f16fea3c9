"""``eldarts report FOLDER``: the paper's figures (3, 4, curves) and tables (1-3) for a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import PUBLISHED_CAPTION, JsonOpt, console, genotype_table, handle_errors, print_json, rich_table


def register(app: typer.Typer) -> None:
    app.command()(report)


@handle_errors
def report(
    folder: Annotated[Path, typer.Argument(help="A search run, evaluation run or ablation folder.", show_default=False)],
    json_: JsonOpt = False,
) -> None:
    """Write the paper's figures (3, 4, curves) and tables (1-3) for a run folder."""
    from ..runs.figures import write_ablation_report, write_eval_report, write_search_report
    from ..runs.files import EvalResults, SearchSummary
    from ..runs.folders import folder_kind
    from ..runs.tables import TABLE1_COLUMNS, ablation_table, evaluation_table, table1_rows
    from .ablate import table3

    kind = folder_kind(folder)
    if kind == "search":
        paths = write_search_report(folder)
        rows = table1_rows([folder])
        if json_:
            print_json({"kind": kind, "written": [str(p) for p in paths], "table1": rows})
            return
        summary = SearchSummary.read(folder)
        console.print(genotype_table(summary.genotype))
        console.print(rich_table("Table 1: CIFAR-10", TABLE1_COLUMNS, rows,
                                 caption=PUBLISHED_CAPTION + "; the measured search cost is this run's wall time"))
        if summary.cost is not None:
            from .search import print_cost_result

            print_cost_result(summary.cost)
    elif kind == "evaluation":
        paths = write_eval_report(folder)
        title, columns, rows = evaluation_table(EvalResults.read(folder))
        if json_:
            print_json({"kind": kind, "written": [str(p) for p in paths], "table": rows})
            return
        console.print(rich_table(title, columns, rows, caption=PUBLISHED_CAPTION))
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
    console.print(f"{kind} report: {len(paths)} files written")
    for path in paths:
        console.print(f"  {escape(str(path))}", highlight=False)
