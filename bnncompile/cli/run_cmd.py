"""``bnncompile run model.so --input x.npy -o y.npy``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import endpoint, remote_options


@click.command("run")
@click.argument("library", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "input_path", required=True, type=click.Path(dir_okay=False),
              help=".npy array (or .npz with an 'inputs' array); any number of samples")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help=".npy to write")
@remote_options
def command(library, input_path, output, rpc, rpc_tracker, rpc_key):
    """Run a compiled library on a numpy array (in chunks of its compiled batch), here or on a
    board (--rpc / --rpc-tracker)."""
    from .. import artifacts
    from ..errors import InputFileError

    remote = endpoint(rpc, rpc_tracker, rpc_key)
    if not Path(library).is_file():
        raise InputFileError(f"{library}: no such library")
    arrays = artifacts.load_npz(input_path, what="--input")
    x = artifacts.input_array(arrays, input_path, what="--input")
    artifacts.check_writable(output, flag="--output")
    from ..runtime import load  # TVM: only once the arguments are known to be good

    with load(library, remote=remote) as runner:
        y = runner.run_batches(x)
        batch = runner.batch
    artifacts.save_npy(output, y)
    top1 = y.reshape(y.shape[0], -1)[0].argmax() if y.ndim > 1 else y[0]
    click.echo(f"wrote {output} {list(y.shape)} ({x.shape[0]} samples in batches of "
               f"{batch}; top-1 of sample 0: {int(top1)})")
