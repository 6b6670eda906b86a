"""``bnncompile targets``: the target registry, this machine's CPU, and what runs here."""

from __future__ import annotations

import json

import click

#: CPU features that decide which kernels are fast here (shown by `targets`)
FEATURES = ("popcnt", "avx2", "fma", "avx512f", "avx512_vpopcntdq", "avx512_vnni", "avx512_bf16",
            "amx_int8", "amx_bf16", "asimd")


def target_rows() -> list[dict]:
    from .. import targets
    from ..schedules import tuning

    rows = []
    for name in targets.names():
        spec = targets.resolve(name)
        ident = spec.identity()
        ok, why = targets.runnable_here(spec)
        pretuned = tuning.pretuned_dir(targets.tvm_target(spec))
        rows.append({"name": name, "description": spec.description, "arch": ident.arch,
                     "schedule_key": ident.schedule_key, "tuning_tag": ident.tag,
                     "runs_here": ok, "why_not": why, "pretuned_records": pretuned is not None,
                     "target": spec.target})
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(as_json):
    """List the compilation targets: this machine's CPU (the `host` target), what each target
    is, and whether its libraries run here."""
    from .. import targets

    flags = targets.cpu_flags()
    host = {"cpu": cpu_model(), "llvm_cpu": targets.resolve("host").target.get("mcpu"),
            "features": [f for f in FEATURES if f in flags]}
    rows = target_rows()
    if as_json:
        click.echo(json.dumps({"host": host, "targets": rows}, indent=2))
        return
    click.echo(f"this machine: {host['cpu']}  (LLVM cpu '{host['llvm_cpu']}'; "
               f"{', '.join(host['features']) or 'no SIMD features detected'})")
    width = max(len(r["name"]) for r in rows)
    runs = ["runs here" if r["runs_here"] else f"not here: {r['why_not']}" for r in rows]
    rw = max(len(x) for x in runs)
    for r, run in zip(rows, runs):
        tuned = "pre-tuned records" if r["pretuned_records"] else "hand schedules"
        click.echo(f"  {r['name']:<{width}}  {r['arch']:<7}  {run:<{rw}}  {tuned:<17}  {r['description']}")
    click.echo("or raw TVM target JSON, e.g. -t '{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}'")
