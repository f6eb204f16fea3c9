"""The ``eldarts`` command line: ``search``, ``evaluate``, ``profile-ops``, ``ablate``, ``report``.

Each command lives in its own ``cli_<name>.py`` module, which loads a
recipe, calls one library function and renders the result.
"""

from __future__ import annotations

import typer

from . import __version__

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
    from . import cli_ablate, cli_evaluate, cli_profile, cli_search

    for module in (cli_search, cli_evaluate, cli_profile, cli_ablate):
        module.register(app)


_register_commands()
