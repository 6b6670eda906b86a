"""``bnncompile run model.so --input x.npy -o y.npy``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputFileError


@click.command("run")
@click.argument("library", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "input_path", required=True, type=click.Path(dir_okay=False),
              help=".npy array (or .npz with an 'inputs' array)")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help=".npy to write")
def command(library, input_path, output):
    """Run a compiled library on a numpy array."""
    import io

    import numpy as np

    from ..artifacts import atomic_write_bytes, load_npz
    from ..runtime import load

    path = Path(input_path)
    if not path.is_file():
        raise InputFileError(f"--input {path}: no such file")
    runner = load(library)
    arrays = load_npz(path, what="--input")
    y = runner(arrays.get("inputs", next(iter(arrays.values()))))
    buf = io.BytesIO()
    np.save(buf, y)
    atomic_write_bytes(output, buf.getvalue())
    click.echo(f"wrote {output} {list(y.shape)} (top-1 of sample 0: {int(y.reshape(y.shape[0], -1)[0].argmax())})")
