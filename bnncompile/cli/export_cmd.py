"""``bnncompile export MODEL -o model.onnx``: a zoo model to ONNX plus a golden file."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write (the golden file goes next to it).")
@click.option("--checkpoint", type=click.Path(), default=None, help="A torch checkpoint to load.")
@click.option("--batch", type=int, default=None,
              help="Fix the batch size of the graph (default: a dynamic batch dimension).")
@click.option("--input-size", type=int, default=None, help="Square input size (default: the model's).")
@click.option("--num-classes", type=int, default=None, help="Classifier width (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Init and image-crop seed.")
@click.option("--golden-images", type=int, default=None,
              help="Real images recorded with their PyTorch outputs in <stem>.golden.npz "
                   "(default: --batch, or 2).")
@click.option("--portable", is_flag=True,
              help="Inline DynamicSign into standard GreaterOrEqual + Where ops, so runtimes "
                   "without the com.bnncompile domain (OpenVINO) read the file; bnncompile "
                   "compiles it to the same binary layers.")
def command(model, output, checkpoint, batch, input_size, num_classes, seed, golden_images, portable):
    """Export zoo MODEL to ONNX (with the DynamicSign function body) and a golden file."""
    import logging
    from pathlib import Path

    from .. import artifacts, limits
    from ..errors import InputFileError

    # files and sizes before torch is imported (seconds) and the model built (minutes)
    artifacts.check_writable(output, flag="--output")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputFileError(f"--checkpoint {checkpoint}: no such file")
    for flag, v, top in (("--input-size", input_size, limits.MAX_INPUT_SIZE),
                         ("--batch", batch, limits.MAX_BATCH), ("--num-classes", num_classes, limits.MAX_CLASSES),
                         ("--golden-images", golden_images, limits.MAX_BATCH)):
        limits.check_size(flag, v, top)

    # torch's exporter warns once per missing torchvision op; not useful to a bnncompile user
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    from ..exporter import export_zoo_model
    from .progress import stages

    with stages(3, "export") as say:
        result = export_zoo_model(model, output, checkpoint=checkpoint, batch=batch,
                                  input_size=input_size, num_classes=num_classes, seed=seed,
                                  golden_images=golden_images, log=say, portable=portable)
    if result.portable:
        click.echo(f"wrote {result.model_path} (portable: {result.num_dynamic_sign} DynamicSign "
                   "sites inlined as GreaterOrEqual + Where)")
    else:
        click.echo(f"wrote {result.model_path} ({result.num_dynamic_sign} DynamicSign nodes)")
    if result.golden_path is not None:
        click.echo(f"wrote {result.golden_path} (real images and their PyTorch outputs)")
