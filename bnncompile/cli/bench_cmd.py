"""``bnncompile bench model.onnx --lib model.so [--threads 1,2] [--against openvino]
[--throughput-lib model_b8.so] [--json | --json-out report.json] [--plot out.png]``."""

from __future__ import annotations

import json

import click

from ..errors import UsageError
from .options import endpoint, remote_options


def _threads(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise UsageError(f"--threads expects a comma-separated list of positive integers, got {text!r}")
    return vals


def _against(values) -> tuple[str, ...]:
    from ..bench import AGAINST_CHOICES

    out = tuple(dict.fromkeys(v.strip() for item in values for v in item.split(",") if v.strip()))
    bad = [v for v in out if v not in AGAINST_CHOICES]
    if bad:
        raise UsageError(f"--against expects one of {', '.join(AGAINST_CHOICES)}, got {', '.join(bad)}")
    return out


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--lib", required=True, type=click.Path(dir_okay=False),
              help="library compiled from MODEL (bnncompile compile); checked by its sidecar")
@click.option("--threads", default="1,2", show_default=True, help="thread counts, e.g. 1,2")
@click.option("--rounds", default=5, show_default=True, help="interleaved rounds")
@click.option("--number", default=10, show_default=True, help="calls per engine per round")
@click.option("--against", multiple=True, metavar="ENGINE",
              help="more engines in the same interleaved run: openvino (OpenVINO FP32 and its "
                   "default precision, 1 request, LATENCY hint; needs bnncompile[openvino])")
@click.option("--throughput-lib", type=click.Path(dir_okay=False),
              help="a library compiled from MODEL with --batch B (e.g. 8): adds images/s at batch B "
                   "(OpenVINO under its THROUGHPUT hint)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report on stdout")
@click.option("--json-out", type=click.Path(dir_okay=False),
              help="also write the JSON report to this file (checked before the run, written atomically)")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="write bar charts (PNG; checked before the run, written atomically)")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="per-kernel breakdown (1 thread) with achieved G binary-MAC/s, and the Relax VM "
                   "builtin calls per inference")
@remote_options
def command(model, lib, threads, rounds, number, against, throughput_lib, as_json, json_out, plot,
            layers, rpc, rpc_tracker, rpc_key):
    """Latency of the compiled model vs ONNX Runtime FP32 and PyTorch eager FP32 (and OpenVINO
    with --against openvino), same interleaved run; the CPU, load and versions are recorded."""
    from .. import artifacts

    counts = _threads(threads)
    engines = _against(against)
    if rounds < 1 or number < 1:
        raise UsageError(f"--rounds and --number must be >= 1, got {rounds} and {number}")
    # every output is checked before the (minutes-long) benchmark runs
    for flag, path in (("--plot", plot), ("--json-out", json_out)):
        if path:
            artifacts.check_writable(path, flag=flag)
    from ..bench import benchmark, check_pairing, format_layers, require_openvino

    # the library (and the batch-B one) must come from MODEL: checked by their sidecars, before
    # anything is timed
    check_pairing(model, lib, throughput_lib)
    if "openvino" in engines:
        require_openvino()

    from ..bench import plot as plot_report
    from .progress import stages

    remote = endpoint(rpc, rpc_tracker, rpc_key)
    total = rounds * len(counts) * (2 if throughput_lib else 1)
    with stages(total, "bench") as say:
        if remote is not None:
            from ..bench import benchmark_remote

            report = benchmark_remote(model, lib=lib, remote=remote, rounds=rounds, number=number,
                                      progress=say)
        else:
            report = benchmark(model, lib=lib, threads=counts, rounds=rounds, number=number,
                               progress=say, against=engines, throughput_lib=throughput_lib,
                               profile_vm=layers)
    data = report.to_dict()
    if json_out:
        artifacts.atomic_write_bytes(json_out, (json.dumps(data, indent=2) + "\n").encode())
        click.echo(f"wrote {json_out}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(report.format())
        if report.layers:
            click.echo(format_layers(report.layers))
    if plot:
        plot_report(report, plot)
        click.echo(f"wrote {plot}", err=True)
