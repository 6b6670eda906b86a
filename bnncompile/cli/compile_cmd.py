"""``bnncompile compile model.onnx --target T -o model.so``."""

from __future__ import annotations

from pathlib import Path

import click

from .. import targets
from ..errors import InputFileError


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
              help="leave BN / residual / RPReLU after binary convs, and the bias / residual "
                   "Adds and sign-deciding chains (GELU) after binary denses, to separate float "
                   "passes (default: run them in the binary kernel's epilogue)")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="check the new library against ONNX Runtime on random inputs (every "
                   "DynamicSign's bits and the outputs) before writing it")
@click.option("--sign-zero", type=click.Choice(["plus", "refuse"]), default="plus", show_default=True,
              help="ONNX Sign maps 0 to 0, one bit cannot: compile it as 0 -> +1 (a warning names "
                   "each site) or refuse")
@click.option("--conv-precision", type=click.Choice(["fp32", "int16", "int8"]), default="fp32",
              show_default=True,
              help="the float convs (stem, CCT tokenizer, shortcuts): fp32 exact, or quantized per "
                   "sample to int16 / int8 levels on integer units (CPU targets; `validate` "
                   "reports the sign flips and top-1 changes against fp32)")
@click.option("--attention-precision", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True,
              help="attention's probability x value products (a Softmax times an activation): "
                   "fp32 exact, or int8 (probabilities per row, values per column, quantized at "
                   "run time; CPU targets, vpdpbusd on AVX-512 VNNI; `validate` reports the effect)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def command(model, target, output, batch, float_only, tuning_db, no_pretuned, exact_math,
            no_fuse_epilogues, verify, sign_zero, conv_precision, attention_precision, quiet):
    """Compile an exported ONNX model into a native library plus a JSON sidecar."""
    from .. import artifacts
    from ..compiler import compile_model
    from .progress import stages

    # the arguments first, then the minute-long build (and its progress bar)
    artifacts.check_writable(output, flag="--output")
    if not Path(model).is_file():
        raise InputFileError(f"{model}: no such file")
    targets.resolve(target)

    with stages(4 if verify else 3, "compile", enabled=not quiet) as say:
        res = compile_model(model, output=output, target=target, batch=batch,
                            binary_kernels=not float_only, progress=say, tuning_db=tuning_db,
                            pretuned=not no_pretuned, fast_math=not exact_math,
                            fuse_epilogues=not no_fuse_epilogues, verify=verify,
                            sign_zero=sign_zero, conv_precision=conv_precision,
                            attention_precision=attention_precision)
    click.echo(f"wrote {res.library} and {res.sidecar.name} ({res.seconds:.1f} s): {res.summary()}")
    for warning in res.warnings:
        click.echo(f"warning: {warning}", err=True)
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
