"""``bnncompile compile model.onnx --target T -o model.so``."""

from __future__ import annotations

import click

from .. import targets


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="host", show_default=True,
              help=f"{', '.join(targets.names())}, or raw TVM target JSON")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="library to write (.so; .tar for cross targets without a linker)")
@click.option("--batch", default=1, show_default=True, type=int, help="static batch size")
@click.option("--float-only", is_flag=True, help="lower binary layers as float (parity debugging)")
@click.option("--tuning-db", default=None, type=click.Path(file_okay=False),
              help="MetaSchedule database from `bnncompile tune`: its records for the target "
                   "replace the hand schedules")
@click.option("--no-pretuned", is_flag=True,
              help="ignore the pre-tuned records shipped for this target (hand schedules only)")
@click.option("--exact-math", is_flag=True,
              help="keep libm exp/erf/tanh (default: TVM's polynomial versions, ~1e-6 relative)")
@click.option("--no-fuse-epilogues", is_flag=True,
              help="leave BN / residual / RPReLU after binary convs to separate float passes "
                   "(default: run them in the binary kernel's epilogue)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def command(model, target, output, batch, float_only, tuning_db, no_pretuned, exact_math,
            no_fuse_epilogues, quiet):
    """Compile an exported ONNX model into a native library plus a JSON sidecar."""
    from ..compiler import compile_model
    from .progress import stages

    with stages(3, "compile", enabled=not quiet) as say:
        res = compile_model(model, output=output, target=target, batch=batch,
                            binary_kernels=not float_only, progress=say, tuning_db=tuning_db,
                            pretuned=not no_pretuned, fast_math=not exact_math,
                            fuse_epilogues=not no_fuse_epilogues)
    click.echo(f"wrote {res.library} and {res.sidecar.name} ({res.num_binary_layers} binary layers, "
               f"{res.seconds:.1f} s)")
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
