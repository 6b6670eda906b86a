"""``bnncompile validate model.onnx [--lib model.so] [--inputs data.npz] [--json]``."""

from __future__ import annotations

import json

import click

from .. import targets
from ..errors import ParityError


@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--lib", type=click.Path(dir_okay=False), help="compiled library to check end to end")
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz with 'inputs' (and 'outputs')")
@click.option("--target", "-t", default="host", show_default=True,
              help=f"target of the debug build when no --lib: {', '.join(targets.names())}")
@click.option("--images", default=4, show_default=True, help="natural photos to add as an input set")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report on stdout")
@click.option("--quiet", "-q", is_flag=True)
def command(model, lib, inputs, target, images, as_json, quiet):
    """Compare the compiled model with PyTorch (golden file) and ONNX Runtime, layer by layer.

    Exit code 0 only when every input set is within the stated tolerances.
    """
    from ..validate import validate_parity

    say = (lambda m: None) if quiet else (lambda m: click.echo(f"... {m}", err=True))
    report = validate_parity(model, lib=lib, inputs=inputs, target=target, real_images=images,
                             progress=say)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        raise ParityError(f"{model}: outside tolerances (see the report above)")
