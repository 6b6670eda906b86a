"""``bnncompile tune model.onnx --target T --trials N --db DIR``."""

from __future__ import annotations

import sys

import click

from .. import targets


@click.command("tune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="host", show_default=True,
              help=f"{', '.join(targets.names())}, or raw TVM target JSON")
@click.option("--trials", default=8, show_default=True, type=int,
              help="measured candidates per distinct kernel (hand schedule included); a rerun "
                   "on the same --db tops each kernel up to this number")
@click.option("--db", "db_dir", required=True, type=click.Path(file_okay=False),
              help="MetaSchedule JSON database directory (created if missing; resumable)")
@click.option("--batch", default=1, show_default=True, type=int, help="static batch size")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="measure on a remote device registered at this RPC tracker")
@click.option("--rpc-key", default=None, metavar="KEY", help="device key at the RPC tracker")
@click.option("--cost-model", type=click.Choice(["random", "xgb", "mlp"]), default=None,
              help="MetaSchedule cost model [default: xgb if xgboost is installed, else random]")
@click.option("--all-kernels", is_flag=True,
              help="also tune bit-packing and float conv kernels (default: binary kernels only)")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def command(model, target, trials, db_dir, batch, rpc_tracker, rpc_key, cost_model, all_kernels, quiet):
    """Tune a model's kernels with MetaSchedule into a database for `compile --tuning-db`."""
    from tqdm import tqdm

    from ..tune import ALL_OPS, DEFAULT_OPS, tune_model
    from . import interrupts

    interrupts.kept = f"the records measured so far stay in {db_dir} (a rerun resumes)"
    bars = []  # created at the first progress report, so usage errors print alone

    def progress(done, total, msg):
        if not bars:
            bars.append(tqdm(total=total, desc="tune", unit="trial", file=sys.stderr,
                             disable=True if quiet else None, leave=False))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)
        bar.set_postfix_str(msg)

    try:
        res = tune_model(model, target=target, trials=trials, db_dir=db_dir, batch=batch,
                         rpc_tracker=rpc_tracker, rpc_key=rpc_key, progress=progress,
                         cost_model=cost_model, ops=ALL_OPS if all_kernels else DEFAULT_OPS)
    finally:
        for bar in bars:
            bar.close()
    for w in res.workloads:
        best = f"{w.best_ms * 1e3:9.1f} us" if w.best_ms is not None else "        -   "
        hand = f"{w.hand_ms * 1e3:9.1f} us" if w.hand_ms is not None else "        -   "
        click.echo(f"{w.symbol:<78} best {best}  hand {hand}  (+{w.trials_run} trials)")
    per = f", {res.seconds_per_trial:.1f} s/trial" if res.seconds_per_trial else ""
    click.echo(f"tuned {len(res.workloads)} kernels for {res.target_tag}: {res.trials_run} new "
               f"trials in {res.seconds:.0f} s{per}; database {res.db_dir}")
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
