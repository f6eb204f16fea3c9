"""Shared pieces of the Typer commands: option aliases, consoles, error handling, table rendering.

Only ``eldarts_cli/cli/`` imports typer or renders rich output; every option
that several commands take is declared here once, so it means the same
thing everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..core.errors import (
    DamagedCheckpoint, DataError, DistributedError, DivergenceError, EldartsError, OutOfMemory, RunFolderError,
    StorageError, is_out_of_memory,
)


def _width(stream) -> Optional[int]:
    """Rich wraps what goes to a file or a pipe (a log, ``| tee``) at 80 columns, which split epoch lines and
    table cells mid-number; there eldarts writes lines of up to 200 (``COLUMNS`` still decides where it is set)."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    columns = os.environ.get("COLUMNS")
    if columns:
        try:
            # (COLUMNS=0 printed nothing, error lines included; a few columns cut every number.) A file or pipe
            # takes the number itself: left to rich, it fell back to 80 once COLUMNS was gone
            width = max(int(columns), 20)
            return None if terminal and width == int(columns) else width
        except ValueError:
            pass  # (rich ignores it too)
    return None if terminal else 200


console = Console(width=_width(sys.stdout), emoji=False)  # (":x:" in a quoted file is text, not an emoji)
err_console = Console(stderr=True, width=_width(sys.stderr), emoji=False)

F = TypeVar("F", bound=Callable)

# -- option aliases used by several commands --------------------------------


def run_folder(text: str) -> Path:
    """``--out``/``--resume``: a folder's path. An empty one is refused: ``Path("")`` is the current folder, which
    was then shown as "." and used as the run folder."""
    if not text:
        raise typer.BadParameter("an empty path (it would be the current folder); give the run folder's path")
    return Path(text).expanduser()  # (--out=~/x, which the shell leaves: it made a folder named "~" here)


def user_path(text: str) -> Path:
    """A file's path as given, ``~`` expanded (``--out=~/x`` and ``"~/r.yaml"`` reach eldarts unexpanded)."""
    return Path(text).expanduser()


def expanded(value: Optional[Path]) -> Optional[Path]:
    """The callback of path options: ``~`` expanded, as :func:`user_path`."""
    return value.expanduser() if value is not None else None


# explicit metavars: typer's own read <bool> for flags (which take no value), <list[str]> and <Path>
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False, parser=user_path,
                                           metavar="RECIPE")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", parser=run_folder, metavar="PATH",
                                                help="Run folder to create.")]
ResumeOpt = Annotated[
    Optional[Path],
    typer.Option("--resume", parser=run_folder, metavar="PATH", show_default=False,
                 help="Continue the run in this folder from its last checkpoint."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a recipe field: --set data.batch_size=64 (repeatable)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", metavar="", help="Print the resolved recipe and sizes, and what "
                                                                       "the run would refuse at its start, then exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON on stdout, alone "
                                                                  "(anything else goes to stderr).")]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", metavar="DEVICE", show_default=False,
                 help="auto, cpu, cuda, cuda:N or mps (overrides the recipe's runtime.device)."),
]


def fail(message: str, code: int = 2) -> "typer.Exit":
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


#: The exit status of a command whose stdout's reader left (``eldarts ... | head -1``): 128 + SIGPIPE, what a shell
#: reports for any program its closed pipe stopped, as Ctrl-C's is 130 and SIGTERM's 143.
STDOUT_CLOSED = 128 + 13


def stdout_reader_gone(fd: int) -> bool:
    """Whether ``fd``, the write end of a pipe, has no reader left (poll reports POLLERR): a ``BrokenPipeError``
    from stdout, not from a socket (torchrun's store) or a file."""
    import select

    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), a closed descriptor
        return False


def stdout_closed() -> NoReturn:
    """End quietly: whoever read stdout has left, so there is no one to tell. Python's recipe (the signal module's
    note on SIGPIPE): stdout pointed at devnull, so that the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(STDOUT_CLOSED)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (the library's and torch's) as one ``warning:`` line each, not Python's two-line format; by whoever
    reports (under torchrun rank 0 alone: the other ranks' console is quiet)."""
    if console.quiet:
        return
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or preemption, ``kill``) or SIGHUP (the terminal or ssh session closed),
    raised in the command as Ctrl-C's ``KeyboardInterrupt`` is: the run stops the same way (its state saved, the
    command that continues it printed), says "terminated (SIGTERM)" and exits 143 (128 + 15), or 129 for SIGHUP
    (which ended the run silently)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


#: The signals that stop a command as Ctrl-C does (where their default action is in place: ``nohup`` ignores SIGHUP).
STOP_SIGNALS = (signal.SIGTERM,) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def stopped_by(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped a command, as its message says it, and its exit status (130 for Ctrl-C, 143 for SIGTERM, 129 for
    SIGHUP)."""
    if isinstance(interrupt, Terminated):
        signum = getattr(interrupt, "signum", signal.SIGTERM)
        return f"terminated ({signal.Signals(signum).name})", 128 + int(signum)
    return "interrupted", 130


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM and SIGHUP (:data:`STOP_SIGNALS`) raise :class:`Terminated` (where they would end the process
    at once: in the main thread, with their default action in place). A second one ends the process at once, as
    before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is signal.SIG_DFL]

    def terminate(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(signum)

    for sig in caught:
        signal.signal(sig, terminate)
    try:
        yield
    finally:
        for sig in caught:
            signal.signal(sig, signal.SIG_DFL)


def on_every_rank(body: Callable[[Any], None]) -> None:
    """A command's ``body(dist)`` in this process's place of a torchrun launch (rank 0 of 1 without one): rank 0
    alone prints progress, tables, warnings and hints; the first rank to fail reports its error, the others leave
    quietly with a non-zero status, and torchrun stops the rest. Asked before leaving the group, so that a peer
    who sees the group break finds the failure already counted."""
    from ..engines.distributed import Distributed

    global _launch, _speaks
    dist = _launch = Distributed.from_env()
    _speaks = None  # (asked afresh for each command: one process may run several, as the tests do)
    dist.connect()
    quiet_console = console.quiet
    console.quiet = quiet_console or not dist.is_main
    try:
        body(dist)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            # rank 0 says how to continue, and is counted as the first to fail so that a peer which then loses it
            # stays quiet; another rank stopped alone leaves quietly, and rank 0, losing it, says how to continue
            if dist.enabled and dist.is_main:
                dist.first_to_fail()
            quiet = dist.enabled and not dist.is_main
        else:
            quiet = dist.enabled and not dist.first_to_fail()
            if not quiet:
                error.first_to_fail = True  # (handle_errors says it, whichever rank this is)
        dist.close(wait=False)
        if quiet:
            raise typer.Exit(stopped_by(error)[1] if isinstance(error, KeyboardInterrupt)
                             else getattr(error, "exit_code", 1)) from None
        raise
    finally:
        console.quiet = quiet_console
    dist.close()


def sets_that_change(folder: Path, model_cls: Any, sets: Optional[Sequence[str]]) -> list[str]:
    """The ``--set`` items that would change a finished run's recipe (``recipe.yaml``): those its "not applied"
    warning names (it named values equal to the run's own too)."""
    from ..config.base import load_recipe, recipe_differences, recipe_to_dict
    from ..core.errors import EldartsError

    path = Path(folder) / "recipe.yaml"
    try:
        own = recipe_to_dict(load_recipe(path, model_cls))
    except EldartsError:
        return list(sets or ())
    changing = []
    for item in sets or ():
        try:
            if recipe_differences(own, recipe_to_dict(load_recipe(path, model_cls, [item]))):
                changing.append(item)
        except EldartsError:
            changing.append(item)
    return changing


def warn_not_applied(folder: Path, model_cls: Any, given: Optional[Path], sets: Optional[Sequence[str]],
                     what: str, again: str) -> None:
    """A finished run asked to resume: warn of what this command gives that the run did not run with, the ``--set``
    values (:func:`sets_that_change`) and the recipe file named (``given``, where it differs from the run's
    ``recipe.yaml`` outside ``runtime``); ``what`` ran ("search"), ``again``: how to run with them."""
    from ..config.base import load_recipe, recipe_differences, recipe_to_dict
    from ..core.errors import EldartsError

    tail = f"not applied: the {what} has finished ({again} in a new --out to run with it)"
    if changing := sets_that_change(folder, model_cls, sets):
        err_console.print(f"[bold yellow]warning:[/] --set {escape(', '.join(changing))} {tail}", highlight=False,
                          soft_wrap=True)
    if given is None:
        return
    own = Path(folder) / "recipe.yaml"
    try:  # the file with this command's --set (the printed resume repeats the run's own --set), less the --set's
        mine = recipe_to_dict(load_recipe(own, model_cls))
        differences = recipe_differences(mine, recipe_to_dict(load_recipe(given, model_cls, list(sets or ()))),
                                         ("runtime.",))
        keys = [item.split("=", 1)[0].strip() for item in sets or ()]  # (said by the --set warning above)
        differences = [d for d in differences
                       if not any(d.split(":", 1)[0] == k or d.startswith(k + ".") for k in keys)]
    except EldartsError:  # the run's recipe unreadable, or the file given: its own errors are said elsewhere
        return
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        said = escape(f"{given} differs from the run's recipe ({own}) in: {shown}")
        err_console.print(f"[bold yellow]warning:[/] {said}; {tail}", highlight=False, soft_wrap=True)


def same_command_again() -> Optional[str]:
    """This command line as the user typed it (``eldarts`` and its arguments, shell-quoted), where this process is
    the ``eldarts`` script or ``python -m eldarts_cli`` alone; ``None`` elsewhere (a torchrun worker, a test)."""
    if Path(sys.argv[0]).name not in ("eldarts", "__main__.py") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    return shlex.join(["eldarts", *sys.argv[1:]])


#: This process's place in a torchrun launch, once :func:`on_every_rank` has it (for :func:`speaks_for_rank_zero`).
_launch: Any = None
_speaks: Optional[bool] = None


def speaks_for_rank_zero() -> bool:
    """Whether this rank, stopped, says how to continue in rank 0's place: rank 0 is gone without a word (SIGKILLed,
    out of memory) and torchrun stopped the rest; the first such rank to ask (rank 0 gave the resume command alone,
    so no eldarts line gave it)."""
    global _speaks
    if _speaks is None and _launch is not None:  # (asked once: the first to ask is counted as failing)
        _speaks = _launch.main_gone() and _launch.first_to_fail()
    return bool(_speaks)


def not_rank_zero() -> bool:
    """Whether this process is a rank other than 0 of a torchrun launch (which leaves saying to rank 0)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def printable_paths() -> None:
    """stdout and stderr print a path named in bytes that are no UTF-8 (a Latin-1 ``café`` folder: Python's
    surrogates), as ``\\udce9``: in a UTF-8 locale other than C's their strict encoder raised at the first line
    naming it."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (OSError, ValueError):  # (a closed or detached stream: nothing to print to)
                pass


class _NamedStdout:
    """sys.stdout, whose write errors name it: a full disk under ``> log`` (or ``> /dev/full``) was "cannot use: No
    space left on device", naming no file. A broken pipe is left as it is (:func:`stdout_closed`)."""

    def __init__(self, stream):
        self._stream = stream

    def _named(self, call, *args):
        try:
            return call(*args)
        except OSError as error:
            if error.filename is None and not isinstance(error, BrokenPipeError):
                error.filename = "the standard output"
            raise

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        return self._named(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def named_stdout() -> Iterator[None]:
    if sys.stdout is None or isinstance(sys.stdout, _NamedStdout):
        yield
        return
    stream = sys.stdout
    sys.stdout = _NamedStdout(stream)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _NamedStdout):
            sys.stdout = stream


def handle_errors(fn: Optional[F] = None, *, restartable: bool | str = False) -> Any:
    """Turn library errors and faults of the environment into one clear message and a non-zero exit code.

    ``@handle_errors``, or ``@handle_errors(restartable=True)`` for a command that a stop in its first second (before
    its run folder holds anything) should name again, to be started as it was (search, evaluate); a text instead
    of True is what the stop says before that command (report: its files may be part-written).

    ``EldartsError``: its message, then its ``hint`` (the command that continues
    the run), exit 2 for bad input, 1 for faults met while running. An
    ``OSError`` that escaped the library (a full or read-only disk, a file
    that cannot be read) is one line and exit 1, except a broken pipe whose reader
    was stdout's (``| head -1``): a quiet exit 141 (:func:`stdout_closed`). Bugs keep
    their traceback. Ctrl-C exits 130, SIGTERM (:func:`sigterm_as_interrupt`) 143.
    """

    if fn is None:
        return functools.partial(handle_errors, restartable=restartable)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        printable_paths()
        try:
            with warnings.catch_warnings(), sigterm_as_interrupt(), named_stdout():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except EldartsError as error:
            # an error every rank met before on_every_rank took over (ablate's refusal of torchrun was said by each):
            # rank 0 says it; within it, the rank that failed first
            if not_rank_zero() and not getattr(error, "first_to_fail", False):
                raise typer.Exit(error.exit_code) from None
            if error.hint:
                err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
                err_console.print(f"  {escape(error.hint)}", highlight=False, soft_wrap=True)
                raise typer.Exit(error.exit_code) from None
            raise fail(str(error), error.exit_code) from None
        except KeyboardInterrupt as interrupt:
            word, code = stopped_by(interrupt)
            # (rank 0 of a torchrun launch says it: another rank's bare word came beside rank 0's line)
            if not getattr(interrupt, "continue_shown", False) and (not not_rank_zero() or speaks_for_rank_zero()):
                again = same_command_again() if restartable else None
                if again is None:
                    err_console.print(f"[yellow]{word}[/]")
                else:  # stopped before the run took over its hints (the first second: imports, the recipe)
                    said = restartable if isinstance(restartable, str) else "nothing was saved yet; start it again with"
                    say_stopped(interrupt, said, again)
            raise typer.Exit(code) from None
        except MemoryError:
            raise fail("out of memory: lower data.batch_size or network.channels") from None
        except OSError as error:
            if isinstance(error, BrokenPipeError) and stdout_reader_gone(sys.stdout.fileno()):
                stdout_closed()  # --json's output to `| head -1`
            where = f" {error.filename}" if error.filename else ""
            given = error.errno == errno.ENAMETOOLONG  # a path the user gave that no disk takes: bad input, 2
            raise fail(f"cannot use{where}: {error.strerror or error}", 2 if given else 1) from None
        except RuntimeError as error:
            if is_out_of_memory(error):
                raise fail(f"out of memory on the device: lower data.batch_size ({_first_line(error)})") from None
            raise

    return wrapper  # type: ignore[return-value]


def say_stopped(interrupt: KeyboardInterrupt, what: str, command: str) -> None:
    """``interrupted: WHAT`` (or ``terminated (SIGTERM): WHAT``), then the command to run, alone on its line (to
    copy), on stderr; by whoever reports (under torchrun rank 0 alone: the other ranks' console is quiet). Marks
    ``interrupt`` as said, so that :func:`handle_errors` does not say it again."""
    speaks = not_rank_zero() and speaks_for_rank_zero()
    if not console.quiet or speaks:
        gone = "rank 0 of this torchrun launch ended without a word (killed?); " if speaks else ""
        err_console.print(f"[yellow]{stopped_by(interrupt)[0]}[/]: {escape(gone + what)}\n  {escape(command)}",
                          highlight=False, soft_wrap=True)
    interrupt.continue_shown = True


@contextlib.contextmanager
def drawing_figures(folder: Path, kind: str) -> Iterator[None]:
    """A finished run's figures and tables being drawn (``kind``: "search", "evaluation"): Ctrl-C (or SIGTERM) or a
    failed write (a full or read-only disk) inside says that the run has finished and its results are saved, and
    names the command that draws the figures again (``eldarts report RUN``), where it gave "interrupted" or the
    write's error alone. An interrupt keeps its exit status."""
    from ..core.io import storage_error

    redraw = command_line("report", folder)
    done = f"the {kind} has finished and its results are saved in {folder}; its figures were not all drawn"
    try:
        yield
    except KeyboardInterrupt as interrupt:
        say_stopped(interrupt, f"{done}; draw them with", redraw)
        raise
    except (StorageError, OSError) as error:
        if isinstance(error, BrokenPipeError):  # stdout's reader left: handle_errors ends quietly
            raise
        if not isinstance(error, StorageError):  # from the drawing itself, not eldarts' atomic writes
            error = storage_error(error, error.filename or Path(folder) / "figures")
        failure = StorageError(f"{error}; {done}: free space (or make the folder writable) and draw them")
        failure.hint = f"draw them with: {redraw}"
        raise failure from None


@contextlib.contextmanager
def printing_results(folder: Path, kind: str) -> Iterator[None]:
    """A finished run's results being printed (``kind``: "search", "evaluation"): Ctrl-C (or SIGTERM) inside, in
    the second after a run's last epoch, said "interrupted" alone (exit 130 or 143), as if the run had not
    finished; it now says that it has and where its results are. The interrupt keeps its exit status."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        say_stopped(interrupt, f"the {kind} has finished and its results are saved in {folder}; print them with",
                    command_line("report", folder))
        raise


def redraw_missing_figures(folder: Path, write_report: Callable[[Path], list], kind: str) -> None:
    """A finished run resumed: draw its figures if a stop while drawing them left them missing, and say so."""
    from ..runs.figures import figures_drawn

    if not figures_drawn(folder):
        with drawing_figures(folder, kind):
            drawn = write_report(folder)
        console.print(f"its figures were missing (stopped while drawing them): {len(drawn)} "
                      f"file{'' if len(drawn) == 1 else 's'} written to "
                      f"{folder / 'figures'}", highlight=False)


def command_line(*parts: object) -> str:
    """A command the user can paste: ``eldarts`` and ``parts`` (``None`` left out), shell-quoted."""
    return shlex.join(["eldarts", *(str(p) for p in parts if p is not None)])


def new_folder_beside(folder: Path) -> Path:
    """``folder``'s name with the first free ``-2``, ``-3`` ...: where a run that cannot continue starts again
    (its own folder is left as it is)."""
    folder = Path(folder)
    return next(path for path in (folder.with_name(f"{folder.name}-{n}") for n in itertools.count(2))
                if not path.exists())


def set_options(sets: Optional[Sequence[str]]) -> list[str]:
    return [item for value in sets or () for item in ("--set", value)]


def resume_or_restart(folder: Path, resume: str, restart: str) -> Callable[[], str]:
    """The command that continues a run, as it stands when it stops: ``resume`` once its folder holds anything
    but the marker, else ``restart`` (the command again with ``--out``: a run stopped while starting may have
    made no folder yet, and ``--resume`` needs one)."""
    from ..runs.folders import MARKER

    def command() -> str:
        folder_ = Path(folder)
        command.checkpointed = (folder_ / "checkpoint.pt").exists()  # (for continue_hint's words)
        return resume if folder_.is_dir() and any(e.name != MARKER for e in folder_.iterdir()) else restart

    return command


def print_resume_notes(said: Console, run_dir: Path, given: str, notes: Sequence[str]) -> None:
    """The recipe fields in which ``given`` (the recipe named on the command line) differs from the run's own,
    which a resume goes on with (``config.base.resume_recipe``'s notes); nothing where there are none."""
    if notes:
        said.print(f"resuming with the run's own recipe ({Path(run_dir) / 'recipe.yaml'}); {given} differs in: "
                   + "; ".join(notes), highlight=False)


@contextlib.contextmanager
def start_anew_hint(run_dir: Path, kind: str, prefix: Optional[str] = None) -> Iterator[None]:
    """A damaged checkpoint (nothing to continue from) met inside: its hint is the command that starts the same
    run again in a folder of its own (``kind``: "search" or "evaluation"); ``prefix``: the torchrun launch that
    replaces ``eldarts``. For the run and its dry run alike (the dry run had named the damage without a way on)."""
    try:
        yield
    except DamagedCheckpoint as error:
        run_dir = Path(run_dir)
        files = [run_dir / "recipe.yaml"] if kind == "search" else [run_dir / "genotype.json", run_dir / "recipe.yaml"]
        anew = command_line("search" if kind == "search" else "evaluate", *files, "--out", new_folder_beside(run_dir))
        if prefix:
            anew = anew.replace("eldarts", prefix, 1)
        error.hint = f"the run cannot continue from it; start the {kind} again in a new folder: {anew}"
        raise


@contextlib.contextmanager
def missing_root_hint(root: Any, again: str) -> Iterator[None]:
    """A resume whose relative ``data.root`` is not found from the current folder (the run's recipe keeps it as
    typed; a resume from another folder, a moved dataset): the error names the ``--set`` that gives its place (the
    resume had no way on)."""
    try:
        yield
    except DataError as error:
        if root is not None and error.hint is None and str(error).startswith("data.root") \
                and not Path(root).expanduser().is_absolute():
            error.hint = (f"a relative data.root is read from the current folder ({Path.cwd()}); give the data's "
                          f"place: {again} --set data.root=PATH")
        raise


@contextlib.contextmanager
def continue_hint(command: str | Callable[[], str], on_memory: Sequence[str] = ()) -> Iterator[None]:
    """Ctrl-C (or SIGTERM), divergence, a full disk or running out of memory inside: say how to continue (``command``,
    or what it returns then: :func:`resume_or_restart`), which always works, since a run folder can be resumed
    from its last checkpoint or, before the first one, from the start.

    A divergence hint adds the ``--set`` values its error suggests (a lower learning rate); running out
    of memory adds ``on_memory`` (e.g. ``runtime.recompute=true``).
    """
    now = command if callable(command) else (lambda: command)

    def saved(line: str) -> str:
        if " --resume " not in line:
            return "nothing was saved yet; start it again with"
        if getattr(now, "checkpointed", True):
            return "finished epochs are saved; continue with"
        return "no epoch had finished (it continues from the first); continue with"  # (the folder holds its recipe)

    try:
        yield
    except KeyboardInterrupt as interrupt:
        line = now()
        say_stopped(interrupt, saved(line), line)  # on stderr: stdout holds a command's results alone
        raise
    except (DivergenceError, StorageError) as error:
        extra = " ".join(shlex.quote(v) for v in set_options(getattr(error, "changes", None)))
        where = "if it was moved, give its new place to --resume: " if getattr(error, "folder_gone", False) else ""
        error.hint = f"{where or 'continue with: '}{now()}" + (f" {extra}" if extra else "")
        raise
    except (RuntimeError, MemoryError) as error:
        from ..engines.distributed import lost_a_peer

        if lost_a_peer(error):  # another process of a torchrun launch was stopped alone (a traceback here)
            line = now()
            failure = DistributedError("another process of this torchrun launch ended (stopped or killed), so this "
                                       "one stopped too")
            failure.hint = f"{saved(line)}: {line}"
            raise failure from None
        if not is_out_of_memory(error):
            raise
        advice = (f"set {', '.join(on_memory)} to continue in less memory" if on_memory
                  else "lower data.batch_size (a new run), or free memory and continue")
        failure = OutOfMemory(f"the device ran out of memory ({_first_line(error)}); the epochs saved so far are "
                              f"kept; {advice}")
        extra = " ".join(shlex.quote(v) for v in set_options(on_memory))
        failure.hint = (f"continue with: {now()} {extra}" if extra
                        else f"after freeing memory, continue with: {now()}")
        raise failure from None


def _first_line(error: BaseException) -> str:
    """The first line of an error; PyTorch's ``[enforce fail at FILE:LINE] CONDITION. MESSAGE`` as MESSAGE."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.startswith("[enforce fail") and "] " in text:
        text = text.split("] ", 1)[1]
        text = text.split(". ", 1)[1] if ". " in text else text
    return text


def check_device_option(device: Optional[str]) -> None:
    """A ``--device`` that names no device (an empty one included), refused as the ``--device`` given."""
    from ..core.device import check_device_name
    from ..core.errors import RecipeError

    if device is not None:
        try:
            check_device_name(device)
        except ValueError as error:
            raise RecipeError(f"--device: {error}") from None


def overrides_with_device(set_: Optional[list[str]], device: Optional[str]) -> list[str]:
    """``--set`` values plus ``--device`` as ``runtime.device=...`` (last, so it wins); a device name that is no
    device is named as the ``--device`` given (not as a ``--set`` the user never typed)."""
    check_device_option(device)
    return list(set_ or []) + ([f"runtime.device={device}"] if device else [])


def check_out_and_resume(out: Optional[Path], resume: Optional[Path]) -> None:
    if resume is not None and out is not None and Path(out) != Path(resume):
        raise RunFolderError(f"--out {out} and --resume {resume} name different folders; give one")


@contextlib.contextmanager
def people_to_stderr(on: bool) -> Iterator[None]:
    """With ``--json``: what a command prints for people (progress, tables, hints) goes to stderr, so that stdout
    holds the JSON alone (:func:`print_json`)."""
    if not on:
        yield
        return
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None  # back to whichever sys.stdout is current (the console was made without a file)


def print_json(data: object) -> None:
    """``data`` as strict JSON on stdout (non-finite numbers as null, as the run's files hold them); nowhere where
    stdout is closed (``>&-``: Python's ``sys.stdout`` is None; it was an AttributeError after the run)."""
    from ..core.io import json_text

    if sys.stdout is not None:
        sys.stdout.write(json_text(data) + "\n")


class FittedTable:
    """A rich table that never cuts a word or a number: each column is at least as wide as its longest word (up to
    24 characters; longer ones, cells and paths, fold), its title is printed above it as a paragraph, and where the
    terminal is narrower than that, each row is printed as ``heading: value`` lines instead. (Rich shrank columns
    to nothing in a narrow terminal: a table's numbers were cut to ``0…`` or left out.)"""

    LONGEST_WORD = 24

    def __init__(self, table: Table):
        self.table, self.title = table, table.title
        table.title = None
        self.least, self.most = [], []  # each column's width: its longest word, its longest line
        for column in table.columns:
            texts = [_plain(cell) for cell in (column.header, *column.cells)]
            word = min(max((len(w) for text in texts for w in text.split()), default=1), self.LONGEST_WORD)
            self.least.append(max(column.min_width or 0, word))
            self.most.append(max(self.least[-1], *(len(line) for text in texts for line in text.split("\n"))))
            column.overflow, column.no_wrap = "fold", False

    def __rich_console__(self, console, options):
        if self.title is not None:
            yield Text(_plain(self.title), style="table.title")
        frame = 3 * len(self.least) + 1  # padding either side of each column, and the borders
        room = options.max_width - frame
        if sum(self.least) <= room:
            widths = [None] * len(self.least)  # (this width's, not an earlier render's)
            if sum(self.most) > room:  # (rich's own shrinking cut columns below their longest word)
                extra, wants = room - sum(self.least), [m - n for m, n in zip(self.most, self.least)]
                widths = [least + extra * want // sum(wants) for least, want in zip(self.least, wants)]
            for column, width in zip(self.table.columns, widths):
                column.width = width
            yield self.table
            return
        columns = [(_plain(column.header).replace("\n", " "), list(column.cells)) for column in self.table.columns]
        headless = not any(heading for heading, _ in columns)  # (a key-value table: its first column is the key)
        for index, row in enumerate(self.table.rows):
            values = [cells[index] if isinstance(cells[index], Text) else Text.from_markup(str(cells[index]))
                      for _, cells in columns]
            if headless:
                yield Text.assemble((f"{values[0].plain}: ", "bold"), *(v.copy() for v in values[1:]),
                                    style=row.style or "")
                continue
            for (heading, _), value in zip(columns, values):
                yield Text.assemble((f"{heading}: ", "bold"), value.copy(), style=row.style or "")
            yield Text("")
        if self.table.caption is not None:
            yield Text(_plain(self.table.caption), style="table.caption")


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def rich_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[dict], caption: str = "") -> FittedTable:
    """A table of ``runs.tables`` rows: measured rows in bold, published rows dimmed and labelled so."""
    table = Table(title=Text(title), title_justify="left", caption=Text(caption) if caption else None,
                  caption_justify="left")  # (Text: a name or path of the user's is not markup)
    for key, heading in columns:  # (the source, which tells a published row from a measured one, is never cut)
        table.add_column(heading, justify="center" if key in ("A", "B", "C") else "left")
    for row in rows:
        style = "dim italic" if row["published"] else "bold"
        table.add_row(*(escape(str(row.get(key, ""))) for key, _ in columns), style=style)
    return FittedTable(table)


def genotype_table(genotype, title: str = "Discovered cells") -> Any:
    """Normal and reduction cell side by side: node, op <- input (as in paper Figure 4); a NAS-Bench-201
    cell as its nodes' edges, with its arch string."""
    from ..models.nb201 import NB201Genotype

    if isinstance(genotype, NB201Genotype):
        from rich.console import Group

        table = Table(title=Text(f"{title} (NAS-Bench-201)"), title_justify="left")
        table.add_column("node", justify="right")
        table.add_column("edges (op <- input)")
        for number, node in enumerate(genotype.cells, start=1):
            table.add_row(str(number), "\n".join(f"{op} <- {'input' if s == 0 else f'node {s}'}" for op, s in node))
        table.add_row("out", f"node {genotype.nodes}")
        return Group(FittedTable(table), Text(genotype.arch, overflow="fold"))
    table = Table(title=Text(title), title_justify="left")
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
    return FittedTable(table)


def margins_line(summary) -> str:
    """The decisiveness of a finished search in one line (``models/decisiveness.py``)."""
    m = summary.margins
    if m is None:
        return "margins: not recorded (a run from an earlier eldarts)"
    text = ("median margin of the choices: " if summary.derive_method != "perturbation" else
            "median softmax margin of the magnitude rule's choices (not the cell saved): ")
    text += f"op {m.edge_median:.3f} (chosen op minus runner-up)"
    if m.node_median is not None:
        text += f", node {m.node_median:.3f} (kept minus first dropped edge)"
    text += f"; threshold {m.threshold:g}: " + ("decided" if m.decided else "NOT decided")
    if summary.derive_margin_median is not None:
        text += (f"; perturbation: median {summary.derive_margin_median:.2f} accuracy points between the kept op "
                 "and the runner-up")
    return text


PUBLISHED_CAPTION = "published (paper) rows are quoted from the EL-DARTS paper, not measured here"
