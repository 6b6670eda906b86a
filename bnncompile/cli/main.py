"""The ``bnncompile`` command: a thin click shell over the library functions.

Each subcommand lives in its own module ``bnncompile/cli/<name>_cmd.py`` exposing a click command
named ``command``; it only converts arguments and calls a library function. Heavy imports (torch,
TVM) happen inside the commands so ``bnncompile --help`` is instant. Errors derived from
:class:`bnncompile.errors.BnncompileError` become one line on stderr and the error's exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import BnncompileError

#: subcommand name -> module (under bnncompile.cli) that defines ``command``; order = help order.
COMMANDS = {
    "zoo": "zoo_cmd",
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnncompile")
def cli():
    """Compile binary neural networks (DySign, INSTA-BNN, ReActNet, binary CCT) with TVM."""


def main(argv=None) -> int:
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
