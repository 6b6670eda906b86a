"""``bnncompile bench model.onnx --lib model.so [--threads 1,2] [--json] [--plot out.png]``."""

from __future__ import annotations

import json

import click

from ..errors import UsageError


def _threads(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise UsageError(f"--threads expects a comma-separated list of positive integers, got {text!r}")
    return vals


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--lib", required=True, type=click.Path(dir_okay=False),
              help="library compiled from MODEL (bnncompile compile)")
@click.option("--threads", default="1,2", show_default=True, help="thread counts, e.g. 1,2")
@click.option("--rounds", default=5, show_default=True, help="interleaved rounds")
@click.option("--number", default=10, show_default=True, help="calls per engine per round")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report on stdout")
@click.option("--plot", type=click.Path(dir_okay=False), help="write a bar chart (PNG)")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="per-kernel breakdown (1 thread) with achieved G binary-MAC/s")
def command(model, lib, threads, rounds, number, as_json, plot, layers):
    """Latency of the compiled model vs ONNX Runtime FP32 and PyTorch eager FP32, same run."""
    from ..bench import benchmark
    from ..bench import plot as plot_report
    from .progress import stages

    counts = _threads(threads)
    with stages(rounds * len(counts), "bench") as say:
        report = benchmark(model, lib=lib, threads=counts, rounds=rounds, number=number, progress=say)
    rows = []
    if layers:
        from ..bench import _set_tvm_threads, format_layers, profile_layers
        from ..runtime import load

        _set_tvm_threads(1)
        rows = profile_layers(load(lib))
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({**report.to_dict(), "layers": [asdict(r) for r in rows]}, indent=2))
    else:
        click.echo(report.format())
        if rows:
            click.echo(format_layers(rows))
    if plot:
        plot_report(report, plot)
        click.echo(f"wrote {plot}", err=True)
