"""The ``eldarts`` command line: ``search``, ``evaluate``, ``profile-ops``, ``ablate``, ``report``.

Each command lives in its own module of this package, which loads a recipe,
calls one library function and renders the result. The commands import the
library (and with it torch, over a second) inside the command function, so
that ``eldarts --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from typing import NoReturn

import typer
import typer.core
from typer.core import TyperGroup

from .. import __version__

_click = getattr(typer.core, "_click", None) or typer.core.click  # typer >= 0.26 vendors click
_NO_ARGS = getattr(_click.exceptions, "NoArgsIsHelpError", ())


class _Commands(TyperGroup):
    """The command group, whose usage errors (a missing argument, an unknown option or command, a value of the
    wrong type) are one ``error:`` line and exit 2, as every other error of eldarts, instead of click's box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        # rich and click end a write to a pipe whose reader left (`| head -1`) with exit 1 and no word, rich after
        # putting devnull in its place: a copy of the pipe tells that case from a failure
        pipe = os.dup(1) if _is_pipe(1) else None
        try:
            self._main(*args, **kwargs)
        except SystemExit as end:
            from .common import stdout_closed, stdout_reader_gone

            if end.code == 1 and pipe is not None and stdout_reader_gone(pipe):
                stdout_closed()
            raise

    def _main(self, *args, **kwargs) -> NoReturn:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # an Exit's code, else the command's value
        except _NO_ARGS as error:  # no command: the help (already printed where typer renders it with rich)
            if error.format_message().strip():
                error.show()
            sys.exit(error.exit_code)
        except _click.exceptions.ClickException as error:
            from .common import fail

            where = f" (see {error.ctx.command_path} --help)" if getattr(error, "ctx", None) is not None else ""
            fail(error.format_message() + where, error.exit_code)
            sys.exit(error.exit_code)
        except typer.Abort:
            from .common import fail

            fail("aborted", 1)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


app = typer.Typer(
    cls=_Commands,
    name="eldarts",
    help="EL-DARTS: efficient and lightweight differentiable architecture search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},  # (-h was "No such option")
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"eldarts {__version__}")
        except OSError as error:  # (a full disk behind `> file` was a traceback)
            if isinstance(error, BrokenPipeError):  # `| head -c0`: the pipe's end is said as every command's
                raise
            from .common import fail

            raise fail(f"cannot write the version to the standard output: {error.strerror or error}", 1) from None
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="Print the version."),
) -> None:
    """EL-DARTS: efficient and lightweight differentiable architecture search."""


def _register_commands() -> None:
    from . import ablate, evaluate, profile, report, search

    for module in (search, evaluate, profile, ablate, report):
        module.register(app)


_register_commands()


def run() -> NoReturn:
    """The ``eldarts`` console script (and ``python -m eldarts_cli``, as torchrun starts it): the app; once a command
    has ended, Ctrl-C, SIGTERM and SIGHUP are ignored while the interpreter tears down (about a second after the last
    line): they made a finished run exit 130 or 143 with no word, which a script's ``&&`` reads as a failure, and
    a stopped one print a traceback. A torchrun worker that finished (its process group left, its files written)
    ends there, without the interpreter's teardown: a worker aborted in it now and then ("terminate called without an active exception",
    SIGABRT, seen in 2 of about 12 test-suite runs), and torchrun then failed the finished search."""
    try:
        app(prog_name="eldarts")
    except SystemExit as end:
        # the outcome is said, whatever it is: after a stop's message, a second Ctrl-C printed a traceback from an
        # atexit callback. (Ignored, not handled: the interpreter's finalisation resets Python's own handlers to the
        # default action before it tears the modules down, but keeps SIG_IGN.)
        for sig in (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())):
            signal.signal(sig, signal.SIG_IGN)
        if end.code in (0, None):
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        raise
    raise SystemExit(0)
