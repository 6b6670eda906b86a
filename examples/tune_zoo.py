"""Re-tune the zoo's binary kernels and write the database ``compile`` applies by default.

    python examples/tune_zoo.py --db /tmp/zoo_db --trials 4            # tune (resumable)
    python examples/tune_zoo.py --db /tmp/zoo_db --trials 4 --install  # ... and ship the records

Every zoo model is exported as ``bnncompile export`` writes it and imported as ``compile`` does,
so the workloads are the kernels ``compile`` builds today (fused epilogues included); each distinct
kernel is tuned once, with the hand schedule measured first as the baseline (``bnncompile tune``).
``--install`` packs the best records per workload into ``schedules/databases/<target tag>/``
(``schedules.tuning.pack_database``: a searched schedule replaces the hand one only when it
measured 1.2x faster).  Kernel computes change with the compiler: rerun this after such changes,
or the shipped records stop matching (``compile``'s sidecar then lists no ``tuned_kernels``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from bnncompile import targets, zoo
from bnncompile.exporter import export_zoo_model
from bnncompile.tune import tune_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True, help="MetaSchedule database directory")
    ap.add_argument("--trials", type=int, default=4, help="measured candidates per kernel")
    ap.add_argument("--models", default="", help="comma-separated subset (default: the whole zoo)")
    ap.add_argument("--install", action="store_true",
                    help="pack the records into schedules/databases/<target tag>/")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m] or zoo.list_models()
    unknown = [m for m in names if m not in zoo.list_models()]
    if unknown:
        print(f"tune_zoo: unknown model(s) {', '.join(unknown)}; known: {', '.join(zoo.list_models())}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(names, desc="zoo", unit="model", file=sys.stderr):
            path = Path(tmp) / f"{name}.onnx"
            export_zoo_model(name, path)  # as `bnncompile export NAME` writes it
            res = tune_model(path, target="host", trials=args.trials, db_dir=args.db)
            tqdm.write(f"{name}: {len(res.workloads)} kernels, {res.trials_run} new trials, "
                       f"{res.seconds:.0f} s", file=sys.stderr)
    if args.install:
        from bnncompile.schedules import tuning
        from bnncompile.schedules.target_identity import identify

        tvm_target = targets.tvm_target(targets.resolve("host"))
        dst = tuning.PRETUNED_ROOT / identify(tvm_target).tag
        tuning.pack_database(args.db, dst, target=tvm_target)
        print(f"installed the records in {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
