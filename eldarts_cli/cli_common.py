"""Shared pieces of the Typer commands: option aliases, console, error handling.

Only ``eldarts_cli/cli*.py`` modules import typer or render rich output.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EldartsError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

# -- option aliases used by several commands --------------------------------
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe field: --set search.epochs=10 (repeatable)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and sizes, then exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


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


def print_json(data: object) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
