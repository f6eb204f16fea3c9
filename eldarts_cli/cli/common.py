"""Shared pieces of the Typer commands: option aliases, consoles, error handling, table rendering.

Only ``eldarts_cli/cli/`` imports typer or renders rich output; every option
that several commands take is declared here once, so it means the same
thing everywhere.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core.errors import EldartsError, RunFolderError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

# -- option aliases used by several commands --------------------------------
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create.")]
ResumeOpt = Annotated[
    Optional[Path],
    typer.Option("--resume", help="Continue the run in this folder from its last checkpoint.", show_default=False),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe field: --set search.epochs=10 (repeatable)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and sizes, then exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help="auto, cpu, cuda or cuda:N (overrides the recipe's runtime.device).", show_default=False),
]


def fail(message: str, code: int = 2) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one clear message and a non-zero exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EldartsError as error:
            raise fail(str(error), error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except MemoryError:
            raise fail("out of memory: lower data.batch_size or network.channels") from None
        except RuntimeError as error:
            if "out of memory" in str(error).lower():
                raise fail(f"out of memory on the device: lower data.batch_size ({error})") from None
            raise

    return wrapper  # type: ignore[return-value]


def overrides_with_device(set_: Optional[list[str]], device: Optional[str]) -> list[str]:
    """``--set`` values plus ``--device`` as ``runtime.device=...`` (last, so it wins)."""
    return list(set_ or []) + ([f"runtime.device={device}"] if device else [])


def check_out_and_resume(out: Optional[Path], resume: Optional[Path]) -> None:
    if resume is not None and out is not None and Path(out) != Path(resume):
        raise RunFolderError(f"--out {out} and --resume {resume} name different folders; give one")


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def rich_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[dict], caption: str = "") -> Table:
    """A table of ``runs.tables`` rows: measured rows in bold, published rows dimmed and labelled so."""
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


def genotype_table(genotype, title: str = "Discovered cells") -> Table:
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


PUBLISHED_CAPTION = "published (paper) rows are quoted from the EL-DARTS paper, not measured here"
