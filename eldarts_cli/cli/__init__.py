"""The ``eldarts`` command line: ``search``, ``evaluate``, ``profile-ops``, ``ablate``, ``report``.

Each command lives in its own module of this package, which loads a recipe,
calls one library function and renders the result. The commands import the
library (and with it torch, over a second) inside the command function, so
that ``eldarts --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="eldarts",
    help="EL-DARTS: efficient and lightweight differentiable architecture search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eldarts {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """EL-DARTS: efficient and lightweight differentiable architecture search."""


def _register_commands() -> None:
    from . import ablate, evaluate, profile, report, search

    for module in (search, evaluate, profile, ablate, report):
        module.register(app)


_register_commands()
