"""The ``bnncompile`` command: a thin click shell over the library functions.

Each subcommand lives in its own module ``bnncompile/cli/<name>_cmd.py`` exposing a click command
named ``command``; it only converts arguments and calls a library function. Heavy imports (torch,
TVM) happen inside the commands, after the arguments are checked, so ``bnncompile --help`` and
argument errors are instant. Errors derived from :class:`bnncompile.errors.BnncompileError`
become one line on stderr and the error's exit code (:data:`EXIT_CODES`); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import EXIT_CODES, BnncompileError

#: subcommand name -> module (under bnncompile.cli) that defines ``command``; order = help order.
COMMANDS = {
    "zoo": "zoo_cmd",
    "targets": "targets_cmd",
    "export": "export_cmd",
    "inspect": "inspect_cmd",
    "compile": "compile_cmd",
    "run": "run_cmd",
    "validate": "validate_cmd",
    "bench": "bench_cmd",
    "tune": "tune_cmd",  # MetaSchedule tuning (bnncompile/tune.py)
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or help lists it)."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__package__}.{COMMANDS[name]}")
        return module.command


_EPILOG = "Exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, prog_name="bnncompile")
def cli():
    """Compile binary neural networks (DySign, INSTA-BNN, ReActNet, binary CCT) with TVM."""


def main(argv=None, *, handle_signals: bool | None = None) -> int:
    """Run the command line; ``handle_signals`` (default: when called as the console script,
    ``argv`` None) routes Ctrl-C / SIGTERM to :mod:`.interrupts`."""
    if handle_signals is None:
        handle_signals = argv is None
    if handle_signals:
        from . import interrupts

        interrupts.install()
    try:
        cli.main(args=argv, prog_name="bnncompile", standalone_mode=False)
    except BnncompileError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
