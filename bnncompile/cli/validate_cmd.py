"""``bnncompile validate model.onnx [--lib model.so] [--inputs data.npz] [--json]``."""

from __future__ import annotations

import json

import click

from .. import targets
from ..errors import ParityError
from .options import endpoint, remote_options


@click.command("validate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--lib", type=click.Path(dir_okay=False), help="compiled library to check end to end")
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz with 'inputs' (and 'outputs')")
@click.option("--target", "-t", default="host", show_default=True,
              help=f"target of the debug build when no --lib: {', '.join(targets.names())}")
@click.option("--images", default=4, show_default=True, type=click.IntRange(min=0),
              help="natural photos (scikit-image) to add as an input set, for image models")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report on stdout")
@click.option("--verbose", "-v", is_flag=True, help="list every DynamicSign layer, not only those with flips")
@click.option("--quiet", "-q", is_flag=True)
@remote_options
def command(model, lib, inputs, target, images, as_json, verbose, quiet, rpc, rpc_tracker, rpc_key):
    """Compare the compiled model with PyTorch (golden file) and ONNX Runtime, layer by layer.

    Exit code 0 only when every input set is within the stated tolerances.
    """
    from ..validate import validate_parity
    from .progress import stages

    with stages(4, "validate", enabled=not quiet) as say:
        report = validate_parity(model, lib=lib, inputs=inputs, target=target, real_images=images,
                                 progress=say, remote=endpoint(rpc, rpc_tracker, rpc_key))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format(verbose=verbose))
    if not report.ok:
        raise ParityError(f"{model}: outside tolerances (see the report above)")
