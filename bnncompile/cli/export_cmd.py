"""``bnncompile export MODEL -o model.onnx``: a zoo model to ONNX plus a golden file."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError


def export_zoo_model(name: str, output, *, checkpoint=None, batch: int = 1,
                     input_size: int | None = None, num_classes: int | None = None, seed: int = 0,
                     golden_images: int = 2, log=None):
    """Build zoo model ``name`` (optionally load ``checkpoint``) and export it.

    The golden file holds ``golden_images`` real photos (``bnncompile.data.real_images``, seeded)
    and the PyTorch outputs. Returns :class:`bnncompile.export.ExportResult`.
    """
    import torch

    from .. import zoo
    from ..data import real_images
    from ..export import _check_writable, export

    log = log or (lambda msg: None)
    for opt, v in (("batch", batch), ("golden_images", golden_images)):
        if not isinstance(v, int) or v < 1:
            raise UsageError(f"Expected --{opt.replace('_', '-')} >= 1, got {v!r}")
    spec = zoo.get_spec(name)  # unknown name -> UsageError listing the known models
    output = Path(output)
    _check_writable(output)  # fail before the slow build/export
    log(f"building {name} (seed {seed})")
    model = zoo.build(name, num_classes=num_classes, input_size=input_size, seed=seed)
    if checkpoint is not None:
        log(f"loading checkpoint {checkpoint}")
        zoo.load_checkpoint(model, checkpoint)
    c, h, w = model.zoo_config["input_shape"]
    if h != w:
        raise UsageError(f"expected a square input size, got {h}x{w}")
    images = torch.from_numpy(real_images(golden_images, h, channels=c, seed=seed))
    example = images[:batch] if batch <= golden_images else torch.from_numpy(
        real_images(batch, h, channels=c, seed=seed))
    log(f"exporting {name} at {c}x{h}x{w} to ONNX")
    return export(model, example, output, golden_inputs=images)


@click.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write (the golden file goes next to it).")
@click.option("--checkpoint", type=click.Path(), default=None, help="A torch checkpoint to load.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Batch of the example input (the exported batch dimension stays dynamic).")
@click.option("--input-size", type=int, default=None, help="Square input size (default: the model's).")
@click.option("--num-classes", type=int, default=None, help="Classifier width (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Init and image-crop seed.")
@click.option("--golden-images", type=int, default=2, show_default=True,
              help="Real images recorded with their PyTorch outputs in <stem>.golden.npz.")
def command(model, output, checkpoint, batch, input_size, num_classes, seed, golden_images):
    """Export zoo MODEL to ONNX (with the DynamicSign function body) and a golden file."""
    import logging

    # torch's exporter warns once per missing torchvision op; not useful to a bnncompile user
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    result = export_zoo_model(model, output, checkpoint=checkpoint, batch=batch,
                              input_size=input_size, num_classes=num_classes, seed=seed,
                              golden_images=golden_images, log=log)
    click.echo(f"wrote {result.model_path} ({result.num_dynamic_sign} DynamicSign nodes)")
    if result.golden_path is not None:
        click.echo(f"wrote {result.golden_path} ({golden_images} real images and PyTorch outputs)")
