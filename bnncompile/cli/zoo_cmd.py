"""``bnncompile zoo``: list the registered models."""

from __future__ import annotations

import json

import click


def zoo_table() -> list[dict]:
    """One row per zoo model: name, family, input size, classes, params, static twin, description.

    ``params`` is the PyTorch parameter count of the model built at its default size.
    """
    import torch

    from .. import zoo

    rows = []
    for name in zoo.list_models():
        spec = zoo.get_spec(name)
        with torch.device("meta"):
            model = spec_model(zoo, name)
        rows.append({
            "name": name, "family": spec.family, "input_size": spec.input_size,
            "in_channels": spec.in_channels, "num_classes": spec.num_classes,
            "params": sum(p.numel() for p in model.parameters()),
            "static_twin": spec.static_twin, "description": spec.description,
        })
    return rows


def spec_model(zoo, name):
    """Build without calibration (only the parameter count is needed)."""
    return zoo.build(name, calibrate=False, dynamic_init="zero")


@click.command("zoo")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(as_json: bool):
    """List the models of the zoo (name, family, input size, classes, parameters)."""
    rows = zoo_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "family", "input", "classes", "torch params", "description")
    table = [header] + [
        (r["name"], r["family"], f"{r['in_channels']}x{r['input_size']}x{r['input_size']}",
         str(r["num_classes"]), f"{r['params'] / 1e6:.2f}M", r["description"]) for r in rows
    ]
    widths = [max(len(t[i]) for t in table) for i in range(len(header) - 1)]
    for t in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1])
    click.echo("torch params: the PyTorch model's parameters; `bnncompile inspect` counts the exported "
               "file's float initializers, after the exporter folds BN and merges equal constants")
