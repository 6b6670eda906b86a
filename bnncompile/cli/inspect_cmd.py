"""``bnncompile inspect model.onnx``: per-layer cost table and totals from the graph alone."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--compare-to", type=click.Path(dir_okay=False), default=None,
              help="Another ONNX file (e.g. the static twin): report this model's overhead over it.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size costs are counted at.")
@click.option("--verbose", "-v", is_flag=True, help="Add the per-node cost table.")
@click.option("--all-nodes", is_flag=True, help="Cost table of every node, not only layers with cost.")
def command(model, as_json, compare_to, batch, verbose, all_nodes):
    """Totals (BOPs, FLOPs, OPs, parameters, dynamic-threshold overhead), then every
    Conv/Gemm/MatMul: binary yes (and how its sign was written) or no (and why)."""
    from ..summary import render_overhead, summarize

    summary = summarize(model, batch=batch)
    overhead = None
    if compare_to is not None:
        other = summarize(compare_to, batch=batch)
        overhead = summary.overhead_vs(other)
    if as_json:
        out = summary.to_dict()
        if overhead is not None:
            out["overhead"] = overhead
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(summary.render(verbose=verbose, all_nodes=all_nodes))
    if overhead is not None:
        click.echo(render_overhead(overhead))
