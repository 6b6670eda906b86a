"""``tune_model``: MetaSchedule-tune a model's binary kernels into a JSON database.

The model is imported with the frontend exactly as ``compile`` does, so the workloads tuned are the
kernels ``compile`` builds (one task per distinct kernel, whatever number of layers share it).
Each task's design space is MetaSchedule's default space plus the hand schedule, and the hand
schedule is measured first as a baseline record, so the best record in the database is never the
worse of the two by more than measurement noise.

Resumable: ``trials`` is the number of measured candidates wanted per workload (the hand baseline
counts as one); a rerun on the same database tops each workload up to that number, and one with
nothing left to do returns before any tuning machinery starts.  Records are appended to
``database_tuning_record.json`` as they are measured, so an interrupted run keeps what it measured.

``compile --tuning-db DIR`` (see :func:`bnncompile.compiler.compile_model`) applies the records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import targets
from .artifacts import load_onnx
from .errors import CompileError, InputFileError, UsageError
from .remote import check_tracker, parse_hostport
from .schedules.target_identity import identify

#: ops tuned by default (the binary kernels); "bitpack", "bitpack_last", "fconv2d" may be added
DEFAULT_OPS = ("bconv2d", "bdense", "bbatch_matmul")
ALL_OPS = ("bitpack", "bitpack_last", "bconv2d", "bdense", "bbatch_matmul", "fconv2d")


@dataclass(frozen=True)
class TuneOptions:
    """Validated once at the entry point."""

    target: str = "host"
    trials: int = 8
    batch: int = 1
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    cost_model: str | None = None  # None: "xgb" if xgboost is importable, else "random"
    num_tuning_cores: int = 2
    build_timeout_s: int = 120
    ops: tuple[str, ...] = DEFAULT_OPS
    seed: int = 0

    def __post_init__(self):
        def positive(name, v):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"Expected --{name} to be a positive integer, got {v!r}")

        positive("trials", self.trials)
        positive("batch", self.batch)
        positive("num-tuning-cores", self.num_tuning_cores)
        positive("build-timeout", self.build_timeout_s)
        if (self.rpc_tracker is None) != (self.rpc_key is None):
            raise UsageError("--rpc-tracker and --rpc-key must be given together")
        if self.rpc_tracker is not None:
            parse_tracker(self.rpc_tracker)
        if self.cost_model not in (None, "random", "xgb", "mlp"):
            raise UsageError(f"Expected --cost-model to be one of random, xgb, mlp; got {self.cost_model!r}")
        bad = [o for o in self.ops if o not in ALL_OPS]
        if bad or not self.ops:
            raise UsageError(f"Expected ops from {', '.join(ALL_OPS)}; got {list(self.ops)!r}")


def parse_tracker(text: str) -> tuple[str, int]:
    return parse_hostport(text, "--rpc-tracker")


@dataclass
class WorkloadResult:
    symbol: str
    op: str
    calls: int
    records_before: int
    trials_run: int
    best_ms: float | None = None
    hand_ms: float | None = None


@dataclass
class TuneResult:
    db_dir: Path
    target_tag: str
    workloads: list[WorkloadResult]
    trials_run: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_trial(self) -> float | None:
        return self.seconds / self.trials_run if self.trials_run else None


def default_cost_model() -> str:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def _silence_ms_console() -> None:
    # MetaSchedule logs per-task tables on stdout at INFO; the file logs under DB/logs keep them.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


def _measure_hand(workloads, tgt, builder, runner, db):
    """Build + run the hand schedules once, commit them as records; returns symbol -> ms."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    schs = []
    for w in workloads:
        sch = s_tir.Schedule(w.mod)
        w.hand(sch)
        schs.append(sch)
    built = builder.build([ms.builder.BuilderInput(s.mod, tgt) for s in schs])
    dev = "cpu" if tgt.kind.name == "llvm" else tgt.kind.name
    ok = [(w, s, b, ms.arg_info.ArgInfo.from_prim_func(s.mod["main"]))
          for w, s, b in zip(workloads, schs, built) if not b.error_msg]
    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, dev, a) for _, _, b, a in ok])
    out = {}
    for (w, s, _, args), fut in zip(ok, futures):
        res = fut.result()
        if res.error_msg or not res.run_secs:
            continue
        db.commit_tuning_record(ms.database.TuningRecord(
            s.trace, db.commit_workload(w.mod), list(res.run_secs), tgt, args))
        secs = [float(x) for x in res.run_secs]
        out[w.symbol] = 1e3 * sum(secs) / len(secs)
    return out


def _progress_callback(report, total: int):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Progress(PyMeasureCallback):
        def __init__(self):
            self.done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(runner_results)
            report(self.done, total, f"task {task_id}: {len(runner_results)} measured")

    return _Progress()


def tune_model(onnx_path, *, target: str = "host", trials: int = 8, db_dir, batch: int = 1,
               rpc_tracker: str | None = None, rpc_key: str | None = None, progress=None,
               cost_model: str | None = None, num_tuning_cores: int = 2, ops=DEFAULT_OPS,
               build_timeout_s: int = 120, seed: int = 0) -> TuneResult:
    """Tune the kernels of ``onnx_path`` for ``target`` into the JSON database at ``db_dir``.

    Args:
        target: registry name, ``host`` or raw TVM target JSON (as for ``compile``).
        trials: measured candidates wanted per distinct kernel workload (hand baseline included);
            workloads that already have that many records for the target are skipped.
        db_dir: database directory (created if missing): ``database_workload.json``,
            ``database_tuning_record.json``, ``logs/``.
        rpc_tracker, rpc_key: ``"HOST:PORT"`` and key: measure on the device serving ``key``
            through an RPC tracker instead of locally.
        progress: optional callable ``(done, total, message)``; called with ``total`` = trials
            to run this time, after every measured batch.
        cost_model: "random" / "xgb" / "mlp"; default "xgb" if xgboost is importable else "random".
        ops: which kernel kinds to tune (default: the binary ones).
    """
    opts = TuneOptions(target=target, trials=trials, batch=batch, rpc_tracker=rpc_tracker,
                       rpc_key=rpc_key, cost_model=cost_model, num_tuning_cores=num_tuning_cores,
                       build_timeout_s=build_timeout_s, ops=tuple(ops), seed=seed)
    report = progress or (lambda done, total, msg: None)
    spec = _check_spec(opts)
    model = load_onnx(onnx_path)
    t0 = time.perf_counter()
    report(0, 0, "extracting kernels")
    workloads = extract_workloads(model, targets.tvm_target(spec), batch=opts.batch, ops=opts.ops)
    return _tune(workloads, spec, opts, db_dir, report, t0)


def extract_workloads(model, target, *, batch: int = 1, ops=DEFAULT_OPS) -> list:
    """Distinct kernel workloads (``schedules.tuning.Workload``) of an ONNX model (``ModelProto``
    or path) for ``target``, in first-use order, filtered to ``ops`` (None: all kernels): the
    model is imported exactly as ``compile`` imports it, with a workload collector as the
    kernels' tuning hook."""
    from .frontend import FrontendOptions, from_onnx
    from .schedules import tuning
    from .schedules.target_identity import as_target

    if not hasattr(model, "graph"):
        model = load_onnx(model)
    collector = tuning.WorkloadCollector()
    from_onnx(model, target=as_target(target), options=FrontendOptions(batch=batch), tuning=collector)
    return [w for w in collector.seen.values() if ops is None or w.op in ops]


def tune_workloads(workloads, *, target: str = "host", trials: int = 8, db_dir,
                   rpc_tracker: str | None = None, rpc_key: str | None = None, progress=None,
                   cost_model: str | None = None, num_tuning_cores: int = 2,
                   build_timeout_s: int = 120, seed: int = 0) -> TuneResult:
    """:func:`tune_model` for explicit :class:`schedules.tuning.Workload` s (from a
    ``tuning.WorkloadCollector`` passed as ``make_*(..., tuning=)``) instead of a model's."""
    opts = TuneOptions(target=target, trials=trials, rpc_tracker=rpc_tracker, rpc_key=rpc_key,
                       cost_model=cost_model, num_tuning_cores=num_tuning_cores,
                       build_timeout_s=build_timeout_s, seed=seed)
    spec = _check_spec(opts)
    return _tune(list(workloads), spec, opts, db_dir, progress or (lambda d, t, m: None),
                 time.perf_counter())


def _check_spec(opts: TuneOptions) -> targets.TargetSpec:
    spec = targets.resolve(opts.target)
    if opts.rpc_tracker is None:
        ok, why = targets.runnable_here(spec)
        if not ok:
            raise UsageError(f"cannot measure target {spec.name} on this machine ({why}); "
                             "use --rpc-tracker HOST:PORT --rpc-key KEY")
    return spec


def _tune(workloads, spec, opts, db_dir, report, t0) -> TuneResult:
    from .schedules import tuning

    db_dir = Path(db_dir)
    if db_dir.exists() and not db_dir.is_dir():
        raise InputFileError(f"--db {db_dir} exists and is not a directory")
    tgt = tuning.tuning_target(targets.tvm_target(spec))
    tag = identify(tgt).tag
    try:
        db = tuning.open_database(db_dir, create=True)
    except OSError as exc:
        raise InputFileError(f"cannot create tuning database {db_dir}: {exc.strerror or exc}") from exc
    todo, results = [], []
    for w in workloads:
        n = tuning.count_records(db, w.mod, tgt)
        results.append(WorkloadResult(w.symbol, w.op, w.calls, n, 0))
        if n < opts.trials:
            todo.append((w, opts.trials - n))
    notes = []
    total = sum(r for _, r in todo)
    if todo:
        if opts.rpc_tracker is not None:
            host, port = parse_tracker(opts.rpc_tracker)
            check_tracker(host, port, opts.rpc_key)
        _run_tuning(todo, tgt, db, db_dir, opts, report, total, results)
    else:
        notes.append(f"all {len(workloads)} workloads already have {opts.trials} records for {tag}")
    _fill_times(workloads, results, db, tgt)
    return TuneResult(db_dir, tag, results, sum(r.trials_run for r in results),
                      time.perf_counter() - t0, notes)


def _make_runner(opts: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)
    if opts.rpc_tracker is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=60)
    host, port = parse_tracker(opts.rpc_tracker)
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=opts.rpc_key,
                                       session_timeout_sec=60, session_priority=1),
        evaluator_config=evaluator, max_workers=1)


def _run_tuning(todo, tgt, db, db_dir, opts, report, total, results):
    _silence_ms_console()
    from tvm.s_tir import meta_schedule as ms

    from .schedules import tuning

    by_symbol = {r.symbol: r for r in results}
    builder = ms.builder.LocalBuilder(f_build=tuning.fast_build, timeout_sec=opts.build_timeout_s,
                                      max_workers=opts.num_tuning_cores)
    runner = _make_runner(opts)
    # 1) the hand schedule as a baseline record for workloads that have none yet
    fresh = [w for w, _ in todo if by_symbol[w.symbol].records_before == 0]
    done = 0
    if fresh:
        report(0, total, f"measuring {len(fresh)} hand schedules")
        hand = _measure_hand(fresh, tgt, builder, runner, db)
        for w in fresh:
            if w.symbol in hand:
                by_symbol[w.symbol].trials_run += 1
                done += 1
        report(done, total, "hand baselines measured")
    # 2) search, grouped by the number of trials still wanted (usually one group)
    groups: dict[int, list] = {}
    for w, _ in todo:
        r = by_symbol[w.symbol]
        left = opts.trials - r.records_before - r.trials_run
        if left > 0:
            groups.setdefault(left, []).append(w)
    cm = opts.cost_model or default_cost_model()
    tuning.light_tensor_intrin(tgt)
    logger_of = {w.symbol: _task_logger(db_dir, w.symbol) for g in groups.values() for w in g}
    for left, group in sorted(groups.items()):
        per_iter = min(left, 16)
        # init_measured_ratio=0: TVM seeds the population with the database's best records and
        # would measure them again (its measured set starts empty), spending a trial on a
        # schedule the database already holds: the hand baseline, most often
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=max(64, 4 * per_iter), init_measured_ratio=0.0,
            init_min_unmeasured=max(16, per_iter),
            genetic_num_iters=1 if cm == "random" else 3, max_fail_count=3)
        space = tuning.search_space(tgt.kind.name)
        tasks = [ms.TuneContext(mod=w.mod, target=tgt, space_generator=space,
                                search_strategy=strategy, task_name=w.symbol,
                                rand_state=opts.seed + i, num_threads=opts.num_tuning_cores,
                                logger=logger_of[w.symbol]).clone()
                 for i, w in enumerate(group)]
        before = {w.symbol: tuning.count_records(db, w.mod, tgt) for w in group}
        offset = done

        def sub(n, _t, msg, offset=offset):
            report(min(total, offset + n), total, msg)

        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _progress_callback(sub, total)]
        try:
            ms.tune_tasks(tasks=tasks, task_weights=[1.0] * len(tasks), work_dir=str(db_dir),
                          max_trials_global=left * len(tasks), max_trials_per_task=left,
                          num_trials_per_iter=per_iter, builder=builder, runner=runner, database=db,
                          cost_model=cm, measure_callbacks=callbacks, task_scheduler="round-robin")
        except Exception as exc:
            why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise CompileError(f"tuning failed: {why}") from exc
        for w in group:
            n = tuning.count_records(db, w.mod, tgt) - before[w.symbol]
            by_symbol[w.symbol].trials_run += max(n, 0)
            done += max(n, 0)
        report(min(done, total), total, "done")


def _task_logger(db_dir, symbol: str) -> logging.Logger:
    """Per-task file logger ``DB/logs/<symbol>.log`` (MetaSchedule's own logger factory fails when
    called twice in one process; and its console output would fight the progress bar)."""
    log_dir = Path(db_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = str((log_dir / f"{symbol[:100]}.log").resolve())
    logger = logging.getLogger(f"bnncompile.tune.{symbol[:100]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        h = logging.FileHandler(path)
        h.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(h)
    return logger


def _fill_times(workloads, results, db, tgt):
    from tvm import s_tir

    from .schedules import tuning

    tag = identify(tgt).tag
    by_symbol = {r.symbol: r for r in results}
    for w in workloads:
        recs = tuning._records_for(db, w.mod, tag, k=1 << 30)
        if not recs:
            continue
        r = by_symbol[w.symbol]
        r.best_ms = _ms(recs[0])
        sch = s_tir.Schedule(w.mod)
        w.hand(sch)
        hand_trace = str(sch.trace)
        r.hand_ms = next((_ms(x) for x in recs if str(x.trace) == hand_trace), None)


def _ms(rec) -> float:
    secs = [float(x) for x in rec.run_secs]
    return 1e3 * sum(secs) / len(secs)
