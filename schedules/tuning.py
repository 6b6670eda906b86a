"""MetaSchedule integration: tuned schedules from a database instead of the hand schedules.

Workload key: a kernel's *unscheduled* PrimFunc (``te.create_prim_func`` of its compute, exactly
as :func:`registry._finish` builds it, before any schedule), normalised the way MetaSchedule
normalises a tuning task (``IRModule({"main": f})`` with ``global_symbol="main"`` and
``tirx.noalias``).  Two kernels with the same compute share a record, whatever layer they come from.

Two objects can be handed to every ``make_*`` as its ``tuning`` argument (explicitly: the
compiler passes one to the frontend, which passes it to each kernel it builds):

* :class:`DatabaseSession` (:func:`open_session`) — looks the workload up in a MetaSchedule
  database (a ``JSONDatabase`` directory or a ``ms.Database``); if a *valid* record measured for
  the same target (its identity's ``tag``: kind, triple, cpu, features; ``num-cores`` ignored)
  exists, the best one's trace is replayed on the unscheduled PrimFunc instead of the hand
  schedule.  A trace that no longer applies falls back to the hand schedule.
* :class:`WorkloadCollector` — records every workload built (``bnncompile tune`` uses it to find
  the kernels a model needs), and keeps the hand schedules.

Tuning only reorders/tiles loops of the same compute, so results are bit-identical for the integer
kernels (tests/tuning checks this against :mod:`.reference`).  The search space is MetaSchedule's
default space (:func:`search_space`); the hand schedule is measured beside it as a record of its
own, so the best record is never a regression beyond measurement noise.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from .target_identity import as_target, identify

__all__ = [
    "PRETUNED_ROOT",
    "DatabaseSession",
    "Workload",
    "WorkloadCollector",
    "fast_build",
    "is_hand_trace",
    "lookup_schedule",
    "open_database",
    "open_session",
    "pretuned_dir",
    "record_digest",
    "search_space",
    "stale_reason",
    "tuning_target",
    "workload_mod",
]

#: pre-tuned records shipped with the package: ``databases/<identity tag>/database_*.json``
PRETUNED_ROOT = Path(__file__).resolve().parent / "databases"

#: ops whose kernels are tuned by default (the binary ones: they dominate a BNN's run time)
BINARY_OPS = ("bconv2d", "bdense", "bbatch_matmul")

# -- keys ---------------------------------------------------------------------------------------

def workload_mod(prim_func_or_args) -> tvm.IRModule:
    """The workload key: unscheduled PrimFunc (or the TE tensors ``[*inputs, out]``) as MetaSchedule
    normalises a tuning task."""
    from tvm import te
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    pf = prim_func_or_args
    if not isinstance(pf, tvm.tirx.PrimFunc):
        pf = te.create_prim_func(list(pf))
    try:
        tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({"main": pf}))
    except tvm.error.InternalError:
        # MetaSchedule sizes every task with EstimateTIRFlops, which has no rule for Let (the
        # fused PReLU binds its input once) and then takes this attribute instead.  It is only
        # logged, so a rough count does; functions it can count keep their workload keys.
        pf = pf.with_attr("estimated_flops", 1)
    return _normalize_mod(pf)


def tuning_target(target, num_cores: int | None = None) -> tvm.target.Target:
    """``target`` with ``num-cores`` set (MetaSchedule's CPU rules require it)."""
    t = as_target(target)
    if t.kind.name != "llvm" or ("num-cores" in t.attrs and int(t.attrs["num-cores"]) > 0):
        return t
    cfg = dict(t.export())
    cfg["num-cores"] = int(num_cores or _physical_cores())
    host = cfg.pop("host", None)
    for k in ("keys", "tag", "features"):
        cfg.pop(k, None)
    return tvm.target.Target(cfg, host=host) if host else tvm.target.Target(cfg)


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _shash(mod) -> int:
    from tvm_ffi import structural_hash

    return int(structural_hash(mod))


# -- databases ----------------------------------------------------------------------------------

def _has_db(d: Path) -> bool:
    return any((d / f"database_workload.json{z}").is_file() for z in ("", ".gz"))


def pretuned_dir(target) -> Path | None:
    """The shipped database directory for ``target``'s tag, if there is one."""
    d = PRETUNED_ROOT / identify(target).tag
    return d if _has_db(d) else None


def _load_gz_database(d: Path):
    """A read-only ``MemoryDatabase`` from gzip-compressed JSONDatabase files (the shipped
    pre-tuned records: the serialised workloads compress ~14x)."""
    import gzip
    import json

    from tvm.s_tir import meta_schedule as ms

    db = ms.database.MemoryDatabase()
    wls = []
    with gzip.open(d / "database_workload.json.gz", "rt") as f:
        for line in f:
            if line.strip():
                wls.append(db.commit_workload(ms.database.Workload.from_json(json.loads(line)).mod))
    rec_path = d / "database_tuning_record.json.gz"
    if rec_path.is_file():
        with gzip.open(rec_path, "rt") as f:
            for line in f:
                if line.strip():
                    idx, rec = json.loads(line)
                    db.commit_tuning_record(ms.database.TuningRecord.from_json(rec, wls[int(idx)]))
    return db


def pack_database(src, dst, *, keep: int = 2, target=None, min_speedup: float = 1.2) -> Path:
    """Write the best ``keep`` valid records per workload of the JSONDatabase directory ``src``
    (for ``target``'s tag if given) as gzip-compressed ``database_{workload,tuning_record}.json.gz``
    in ``dst`` (how ``schedules/databases/<tag>`` is made).  Works on the JSON lines as written
    by MetaSchedule (``[workload_index, [trace, run_secs, target, args_info]]``).

    A searched record replaces the hand schedule's record (recognised by its trace: hand
    schedules never sample) as the best only if it measured ``min_speedup`` times faster: with a
    few trials, one noisy measurement each, smaller wins are mostly noise (a 1.14x "win" on a
    1024-channel conv re-timed 10-20 % slower).  The hand schedule's record is always kept: a
    searched win counts only against the hand schedule it was measured with
    (:func:`stale_reason`)."""
    import gzip
    import json

    src, dst = Path(src), Path(dst)
    tag = identify(target).tag if target is not None else None
    wl_lines = (src / "database_workload.json").read_text().splitlines()
    best: dict[int, list] = {}
    for line in (src / "database_tuning_record.json").read_text().splitlines():
        if not line.strip():
            continue
        idx, rec = json.loads(line)
        secs = rec[1]
        if not secs or max(float(x) for x in secs) >= 1e9:
            continue
        if tag and identify(tvm.target.Target(rec[2])).tag != tag:
            continue
        best.setdefault(int(idx), []).append((sum(float(x) for x in secs) / len(secs), rec))
    out_wl, out_rec = [], []
    for idx in sorted(best):
        j = len(out_wl)
        out_wl.append(wl_lines[idx])
        ranked = sorted(best[idx], key=lambda t: t[0])
        hand = next((t for t in ranked if "Sample" not in json.dumps(t[1][0])), None)
        if hand is not None and ranked[0] is not hand and ranked[0][0] * min_speedup > hand[0]:
            ranked = ranked[ranked.index(hand):]  # drop the marginal "wins": hand ranks first
        kept = ranked[:keep]
        if hand is not None and all(t is not hand for t in kept):
            kept.append(hand)  # what a searched win was measured against (stale_reason)
        for _, rec in kept:
            out_rec.append(json.dumps([j, rec], separators=(",", ":")))
    dst.mkdir(parents=True, exist_ok=True)
    for name, lines in (("database_workload.json.gz", out_wl),
                        ("database_tuning_record.json.gz", out_rec)):
        with gzip.GzipFile(dst / name, "wb", compresslevel=9, mtime=0) as f:
            f.write(("\n".join(lines) + "\n").encode())
    return dst


def open_database(db, *, create: bool = False):
    """``db``: a ``ms.Database`` (returned as is) or a directory holding
    ``database_workload.json`` / ``database_tuning_record.json`` (or their ``.json.gz`` forms,
    loaded read-only into memory).  A missing directory or files raise ``FileNotFoundError``
    unless ``create`` (then they are created)."""
    from tvm.s_tir import meta_schedule as ms

    if isinstance(db, ms.Database):
        return db
    d = Path(db)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    elif not d.is_dir():
        raise FileNotFoundError(f"tuning database directory {d} does not exist")
    elif not _has_db(d):
        raise FileNotFoundError(f"{d} is not a tuning database (no database_workload.json; "
                                "create one with `bnncompile tune`)")
    if not create and not (d / "database_workload.json").is_file():
        return _load_gz_database(d)
    for name in ("database_workload.json", "database_tuning_record.json"):
        _drop_torn_line(d / name)
    return ms.database.JSONDatabase(work_dir=str(d), allow_missing=create)


def _drop_torn_line(path: Path) -> None:
    """A tuning run killed while appending a record leaves a partial last line, which would
    make the database unreadable: cut it (the records before it are complete)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    import json

    head, _, last = data.rpartition(b"\n")
    try:
        json.loads(last)
    except ValueError:
        path.write_bytes(head + b"\n" if head else b"")


def _records_for(db, mod: tvm.IRModule, tag: str, k: int = 1) -> list:
    """Best ``k`` valid records of ``mod`` measured on a target with tag ``tag`` (no writes)."""
    if not db.has_workload(mod):
        return []
    wl = db.commit_workload(mod)  # existing entry: returned, nothing appended
    out = []
    for rec in db.get_top_k(wl, 1 << 20):  # sorted by mean run time, invalid runs excluded
        if rec.target is not None and identify(rec.target).tag == tag:
            out.append(rec)
            if len(out) >= k:
                break
    return out


def count_records(db, mod: tvm.IRModule, target) -> int:
    """Valid records of workload ``mod`` measured for ``target``'s tag."""
    return len(_records_for(db, mod, identify(target).tag, k=1 << 30))


def record_digest(rec, mod: tvm.IRModule) -> str:
    h = hashlib.sha256()
    h.update(str(_shash(mod)).encode())
    h.update(str(rec.trace).encode())
    h.update(repr([float(x) for x in rec.run_secs or []]).encode())
    return h.hexdigest()


def is_hand_trace(trace) -> bool:
    """A trace that samples nothing is a hand schedule's (searched ones always sample)."""
    return not any(inst.kind.name.startswith("Sample") for inst in trace.insts)


def lookup_schedule(db, mod: tvm.IRModule, target):
    """Best record's schedule for (workload, target) as ``(s_tir.Schedule, record)``;
    ``(None, None)`` without a record, ``(None, record)`` when the best is the hand schedule's:
    the hand schedule won, so today's hand schedule is built, not the one that was measured
    (hand schedules improve; a replayed old one would undo that)."""
    from tvm import s_tir

    recs = _records_for(db, mod, identify(target).tag)
    if not recs:
        return None, None
    rec = recs[0]
    if is_hand_trace(rec.trace):
        return None, rec
    sch = s_tir.Schedule(mod)
    rec.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch, rec


def stale_reason(db, mod: tvm.IRModule, target, hand: Callable) -> str | None:
    """Why the best (searched) record of ``mod`` no longer counts, or None.  A searched
    schedule is kept only because it beat the hand schedule *of its tuning run*; once the hand
    schedule improves, that win is unproven (Zen 3: CCT-7's attention scores, a record of
    0.113 ms kept over the hand schedule of its day; today's hand schedule 0.083 ms, CCT-7
    3 % faster without the record).  So the hand schedule's own record must be in the database
    and its trace must still produce what today's hand schedule produces."""
    from tvm import s_tir
    from tvm_ffi import structural_equal

    recs = _records_for(db, mod, identify(target).tag, k=1 << 30)
    old = next((r for r in recs if is_hand_trace(r.trace)), None)
    if old is None:
        return "no record of the hand schedule it was measured against"
    then, now = s_tir.Schedule(mod), s_tir.Schedule(mod)
    try:
        old.trace.apply_to_schedule(then, remove_postproc=True)
    except Exception:
        return "the hand schedule it was measured against no longer replays"
    hand(now)
    if not structural_equal(then.mod, now.mod):
        return "the hand schedule changed since it was measured"
    return None


@dataclass
class DatabaseSession:
    """A tuning database opened for one build (:func:`open_session`), and what the build looked
    up and applied."""

    db: object
    target: tvm.target.Target | None
    tag: str
    path: str | None = None
    #: kernel symbol -> {"op", "run_ms", "digest"} for every kernel that got a tuned schedule
    applied: dict[str, dict] = field(default_factory=dict)
    #: kernel symbol -> reason, for records that existed but could not be replayed
    failed: dict[str, str] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    #: kernel symbol -> record digest, for kernels whose best record is the hand schedule's
    #: (built with today's hand schedule)
    hand_won: dict[str, str] = field(default_factory=dict)
    #: kernel symbol -> reason, for searched records measured against an older hand schedule
    #: (:func:`stale_reason`; built with today's hand schedule)
    stale: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """SHA-256 over the records used, hand-won ones included (order independent); "" if
        none."""
        used = [v["digest"] for v in self.applied.values()] + list(self.hand_won.values())
        if not used:
            return ""
        h = hashlib.sha256()
        for d in sorted(used):
            h.update(d.encode())
        return h.hexdigest()


    def schedule(self, pf, *, op: str, symbol: str, key: str, hand: Callable, target,
                 forced: bool = False):
        """The ``tuning`` hook of ``registry.make_*``: the best record's schedule of this
        unscheduled workload, or None to use the hand schedule (also for a forced key)."""
        if forced:
            return None
        mod = workload_mod(pf)
        try:
            sch, rec = lookup_schedule(self.db, mod, self.target or as_target(target))
        except Exception as exc:  # a stale / foreign record: never fail the build over it
            self.failed[symbol] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return None
        if sch is None:
            if rec is None:
                self.misses.append(symbol)
            else:
                self.hand_won[symbol] = record_digest(rec, mod)
            return None
        why = stale_reason(self.db, mod, self.target or as_target(target), hand)
        if why is not None:
            self.stale[symbol] = why
            return None
        secs = [float(x) for x in rec.run_secs or []]
        self.applied[symbol] = {"op": op, "run_ms": round(1e3 * sum(secs) / max(len(secs), 1), 4),
                                "digest": record_digest(rec, mod)}
        return sch.mod["main"]


def open_session(db_dir_or_database, target=None) -> DatabaseSession:
    """A :class:`DatabaseSession` over a database directory or ``ms.Database``; records are
    matched to ``target``'s tag (default: the target each kernel is built for)."""
    db = open_database(db_dir_or_database)
    path = str(db_dir_or_database) if isinstance(db_dir_or_database, (str, os.PathLike)) else None
    tgt = as_target(target) if target is not None else None
    return DatabaseSession(db, tgt, identify(tgt).tag if tgt is not None else "", path)


# -- workload collection ------------------------------------------------------------------------

@dataclass
class Workload:
    """A distinct kernel workload seen while building a model."""

    op: str
    symbol: str  # global_symbol the kernel gets (unique per shape/options/target key)
    key: str  # schedule key ("x86", "cpu", ...)
    mod: tvm.IRModule  # workload key (unscheduled)
    hand: Callable  # the hand schedule function (s_tir.Schedule) -> None
    calls: int = 1


@dataclass
class WorkloadCollector:
    """The ``tuning`` hook that records ``symbol -> Workload`` of every kernel built and keeps
    the hand schedules."""

    seen: dict[str, Workload] = field(default_factory=dict)

    def schedule(self, pf, *, op: str, symbol: str, key: str, hand: Callable, target,
                 forced: bool = False):
        if symbol in self.seen:
            self.seen[symbol].calls += 1
        else:
            self.seen[symbol] = Workload(op, symbol, key, workload_mod(pf), hand)
        return None


# -- tuning helpers -----------------------------------------------------------------------------

def fast_build(mod, target, _params):
    """MetaSchedule's default builder minus ``import tvm.s_tir.tensor_intrin`` (50-75 s in every
    fresh builder process, longer than the build timeout; see the TVM field notes section 3)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def light_tensor_intrin(target) -> None:
    """Register only the CPU tensor intrinsics a CPU target's schedule rules can use.

    ``ms.TuneContext()`` runs ``import tvm.s_tir.tensor_intrin``, whose package ``__init__``
    also builds every CUDA/ROCm/Metal/Hexagon intrinsic: 30-140 s on this 2-core VM, in every
    tuning process.  For llvm targets we register the package without its ``__init__`` and import
    the CPU submodules (0.2-1.5 s); TuneContext's import then finds it in ``sys.modules``.
    Other targets (and a process that already imported it) are left alone."""
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    t = as_target(target)
    if name in sys.modules or t.kind.name != "llvm":
        return
    import tvm.s_tir as s_tir_pkg

    pkg = types.ModuleType(name)
    pkg.__path__ = [os.path.join(os.path.dirname(s_tir_pkg.__file__), "tensor_intrin")]
    pkg.__package__ = name
    sys.modules[name] = pkg
    triple = str(t.attrs.get("mtriple", "") or "")
    subs = (["arm_cpu"] if triple.startswith(("aarch64", "arm")) else
            ["riscv_cpu"] if triple.startswith("riscv") else ["x86"])
    try:
        for sub in subs:
            setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
    except Exception:  # fall back to the full (slow) import
        sys.modules.pop(name, None)
        for sub in subs:
            sys.modules.pop(f"{name}.{sub}", None)


def search_space(kind: str = "llvm"):
    """MetaSchedule's default post-order-apply space, minus ``ApplyCustomRule``: it looks up a
    registered rule for every ``schedule_rule`` attribute of our computes (``bnn_bconv2d`` ...)
    and logs "Unknown schedule rule" for each.  The hand schedule is not part of the space: it is
    measured once as the baseline record (``bnncompile.tune``), and TVM's evolutionary search
    does not skip what the database already holds, so a hand candidate in the space could be
    measured again as a "searched" trial (a trace without mutable decisions gains nothing from
    the search anyway)."""
    from tvm.s_tir import meta_schedule as ms

    rules = [r for r in ms.ScheduleRule.create(kind) if type(r).__name__ != "ApplyCustomRule"]
    return ms.space_generator.PostOrderApply(sch_rules=rules)
