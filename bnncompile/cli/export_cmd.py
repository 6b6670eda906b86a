"""``bnncompile export MODEL -o model.onnx``: a zoo model to ONNX plus a golden file."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError


def export_zoo_model(name: str, output, *, checkpoint=None, batch: int | None = None,
                     input_size: int | None = None, num_classes: int | None = None, seed: int = 0,
                     golden_images: int | None = None, log=None):
    """Build zoo model ``name`` (optionally load ``checkpoint``) and export it.

    Args:
        batch: None (default) exports a dynamic batch dimension (traced with 2 images: torch.export
            specialises a batch of 1 to a constant); an int fixes the batch of the graph.
        golden_images: real photos (``bnncompile.data.real_images``, seeded) recorded with their
            PyTorch outputs; default ``batch`` if fixed, else 2. Must equal ``batch`` if fixed.

    Returns :class:`bnncompile.export.ExportResult`.
    """
    import torch

    from .. import zoo
    from ..data import real_images
    from ..export import _check_writable, export

    log = log or (lambda msg: None)
    if golden_images is None:
        golden_images = batch or 2
    for opt, v in (("batch", batch), ("golden-images", golden_images)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise UsageError(f"Expected --{opt} >= 1, got {v!r}")
    if batch is not None and golden_images != batch:
        raise UsageError(f"with a fixed --batch {batch}, --golden-images must be {batch}, got {golden_images}")
    zoo.get_spec(name)  # unknown name -> UsageError listing the known models
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
    images = torch.from_numpy(real_images(max(golden_images, 2), h, channels=c, seed=seed))
    example = images[:2] if batch is None else images[:batch]
    log(f"exporting {name} at {c}x{h}x{w}, batch {batch or 'dynamic'}, to ONNX")
    return export(model, example, output, golden_inputs=images[:golden_images],
                  dynamic_batch=batch is None)


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
        click.echo(f"wrote {result.golden_path} (real images and their PyTorch outputs)")
