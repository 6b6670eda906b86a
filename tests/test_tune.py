"""MetaSchedule tuning: bit-exact tuned kernels, resumable database, compile with records, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from bnncompile.schedules.target_identity import identify


def _host():
    from bnncompile import targets

    return targets.tvm_target(targets.resolve("host"))


def test_tune_records_every_binary_kernel(tuned):
    db, res, seen = tuned
    assert {w.op for w in res.workloads} == {"bconv2d", "bdense"}
    assert len(res.workloads) == 2
    for w in res.workloads:
        assert w.records_before == 0 and w.trials_run >= 1, w
        assert w.best_ms is not None and w.hand_ms is not None  # hand baseline is a record
        assert w.best_ms <= w.hand_ms
    assert (db / "database_workload.json").is_file()
    assert seen and seen[-1][0] == seen[-1][1] == res.trials_run


def test_resume_is_fast_and_keeps_records(tuned, tiny_onnx):
    from bnncompile.tune import tune_model

    db, res, _ = tuned
    before = (db / "database_tuning_record.json").read_text()
    t0 = time.perf_counter()
    again = tune_model(tiny_onnx, trials=2, db_dir=db)
    assert time.perf_counter() - t0 < 30
    assert again.trials_run == 0 and again.notes
    assert [w.records_before for w in again.workloads] == [w.records_before + w.trials_run
                                                          for w in res.workloads]
    assert (db / "database_tuning_record.json").read_text() == before


def test_every_tuned_record_is_bit_exact_vs_reference(tuned):
    """Replay *every* record of the conv and dense workloads (not only the best) and compare with
    schedules/reference.py: tuning may only reorder loops."""
    import tvm
    from bnncompile.schedules import packing, reference, registry, tuning
    from tvm import s_tir

    db_dir, _, _ = tuned
    db = tuning.open_database(db_dir)
    tgt = _host()
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    x = np.where(rng.random((1, 16, 8, 8)) < 0.5, -1.0, 1.0).astype(np.float32)
    w = np.where(rng.random((16, 16, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    scale = rng.random(16).astype(np.float32)
    res = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    # Tiny's conv as compiled: the residual ``+ x`` runs in the kernel's epilogue
    make = dict(padding=1, with_scale=True, post=("residual",), target=tgt)
    collector = tuning.WorkloadCollector()
    registry.make_bconv2d(x.shape, w.shape, **make, tuning=collector)
    wl = next(iter(collector.seen.values()))
    recs = tuning._records_for(db, wl.mod, identify(tgt).tag, k=100)
    assert len(recs) >= 2
    ref = reference.bconv2d_ref(x, w, padding=1, scale=scale, post=[("residual", res)])
    xb = reference.bitpack_ref(x, 0.0)
    args = [xb, packing.pack_conv_weight(w, block=registry.bconv_weight_block(tgt))]
    args.append(packing.conv_border_table(w, x.shape[2:], padding=1))
    args += [scale, res]
    for rec in recs:
        sch = s_tir.Schedule(wl.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        lib = tvm.compile(sch.mod, target=tgt).jit()
        out = tvm.runtime.empty(ref.shape, "float32", dev)
        lib["main"](*[tvm.runtime.tensor(a, dev) for a in args], out)
        # integer accumulators are exact; acc * scale + residual may be contracted into an FMA
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-5)
    # the make_* contract holds for a tuned kernel: same symbol and attrs as the hand one
    hand = registry.make_bconv2d(x.shape, w.shape, **make)
    sess = tuning.open_session(db, tgt)
    pf = registry.make_bconv2d(x.shape, w.shape, **make, tuning=sess)
    # (the best record may be the hand schedule's: then today's hand schedule is built)
    assert (wl.symbol in sess.applied) != (wl.symbol in sess.hand_won)
    assert bool(pf.attrs["tirx.is_scheduled"])
    assert str(pf.attrs["global_symbol"]) == str(hand.attrs["global_symbol"]) == wl.symbol
    assert list(pf.attrs["bnn.param_names"]) == list(hand.attrs["bnn.param_names"])


def test_compile_with_db_matches_untuned(tuned, tiny_onnx, tmp_path):
    from bnncompile import runtime
    from bnncompile.compiler import compile_model

    db, _, _ = tuned
    a = compile_model(tiny_onnx, output=tmp_path / "hand.so", pretuned=False)
    b = compile_model(tiny_onnx, output=tmp_path / "tuned.so", tuning_db=db)
    side_a, side_b = (json.loads(p.read_text()) for p in (a.sidecar, b.sidecar))
    assert side_a["tuning"] is None
    t = side_b["tuning"]
    assert t["database"] == str(db.resolve()) and len(t["records_digest"]) == 64
    assert len(t["tuned_kernels"]) + len(t["hand_won"]) == 2 and not t["failed"]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ya, yb = runtime.load(a.library)(x), runtime.load(b.library)(x)
    # integer accumulators are exact; the fused float epilogue (acc * scale) rounds the same way
    np.testing.assert_allclose(ya, yb, rtol=1e-6, atol=1e-6)


def test_workload_collector_keeps_the_hand_schedule():
    from bnncompile.schedules import registry, tuning

    tgt = _host()
    pf = registry.make_bdense((1, 4, 64), (8, 64), target=tgt)
    collector = tuning.WorkloadCollector()
    pf2 = registry.make_bdense((1, 4, 64), (8, 64), target=tgt, tuning=collector)
    registry.make_bdense((1, 4, 64), (8, 64), target=tgt, tuning=collector)
    assert len(collector.seen) == 1 and next(iter(collector.seen.values())).calls == 2
    from tvm_ffi import structural_equal

    assert structural_equal(pf, pf2)


def test_pack_database_roundtrip(tuned, tmp_path):
    from bnncompile.schedules import tuning

    db, _, _ = tuned
    out = tuning.pack_database(db, tmp_path / "packed", keep=1)
    mem = tuning.open_database(out)
    recs = mem.get_all_tuning_records()
    by_workload = {}
    for rec in recs:
        by_workload.setdefault(str(rec.workload.mod), []).append(rec)
    assert len(by_workload) == 2
    for kept in by_workload.values():
        # the best one, plus the hand schedule's when a searched one is best (stale_reason)
        assert any(tuning.is_hand_trace(r.trace) for r in kept)
        assert len(kept) <= 2


def test_records_of_a_tuning_run_are_not_stale(tuned, tiny_onnx):
    """The hand record a tuning run writes (MetaSchedule's trace, postprocessors and all)
    replays to exactly what the hand schedule builds today: no record of a fresh run is
    stale, whichever won."""
    from bnncompile.schedules import tuning

    from bnncompile.tune import extract_workloads

    db, _, _ = tuned
    mem = tuning.open_database(db)
    workloads = extract_workloads(tiny_onnx, _host())
    assert workloads
    for w in workloads:
        assert tuning.stale_reason(mem, w.mod, _host(), w.hand) is None, w.symbol


@pytest.mark.parametrize("argv, needle", [
    (["tune", "{m}", "--db", "{d}", "--trials", "0"], "Expected --trials to be a positive integer, got 0"),
    (["tune", "{m}", "--db", "{d}", "--rpc-tracker", "127.0.0.1:1"], "must be given together"),
    (["tune", "{m}", "--db", "{d}", "--rpc-tracker", "nohost", "--rpc-key", "k"], "HOST:PORT"),
    (["compile", "{m}", "-o", "{o}", "--tuning-db", "{missing}"], "does not exist"),
])
def test_cli_bad_inputs(argv, needle, tiny_onnx, tmp_path, capsys):
    from bnncompile.cli.main import main

    fmt = {"m": str(tiny_onnx), "d": str(tmp_path / "db"), "o": str(tmp_path / "x.so"),
           "missing": str(tmp_path / "nope")}
    rc = main([a.format(**fmt) for a in argv])
    err = capsys.readouterr().err
    assert rc != 0 and needle in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    if argv[0] == "tune":  # nothing else (no progress bar) before a usage error
        assert lines == errors, err


def test_cli_unreachable_tracker(tiny_onnx, tmp_path, capsys):
    import socket

    from bnncompile.cli.main import main

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    t0 = time.perf_counter()
    rc = main(["tune", str(tiny_onnx), "--db", str(tmp_path / "db"), "-q", "--trials", "1",
               "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "k"])
    err = capsys.readouterr().err
    assert rc != 0 and "cannot reach RPC tracker" in err, err
    assert time.perf_counter() - t0 < 60


def test_cli_tune_resume_and_compile(tuned, tiny_onnx, tmp_path, capsys):
    from bnncompile.cli.main import main

    db, _, _ = tuned
    assert main(["tune", str(tiny_onnx), "--db", str(db), "--trials", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "0 new trials" in out
    assert main(["compile", str(tiny_onnx), "-o", str(tmp_path / "m.so"), "--tuning-db", str(db),
                 "-q"]) == 0
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["tuning"]["tuned_kernels"] or side["tuning"]["hand_won"]


def test_tuned_integer_kernels_bit_exact(tmp_path):
    """Integer-accumulator kernels (no epilogue): tune bdense / bbatch_matmul / a one-padded
    bconv2d (2 trials each: hand + 1 searched) and replay every record vs schedules/reference.py."""
    import tvm
    from bnncompile.schedules import packing, reference, registry, tuning
    from tvm import s_tir

    from bnncompile.tune import tune_workloads

    tgt = _host()
    collector = tuning.WorkloadCollector()
    registry.make_bdense((2, 5, 100), (24, 100), target=tgt, tuning=collector)
    registry.make_bbatch_matmul((2, 6, 70), (2, 10, 70), target=tgt, tuning=collector)
    registry.make_bconv2d((1, 70, 6, 6), (8, 70, 3, 3), padding=1, pad_value="one", target=tgt,
                          tuning=collector)
    seen = collector.seen
    res = tune_workloads(list(seen.values()), trials=2, db_dir=tmp_path / "db", build_timeout_s=60)
    assert res.trials_run == 6
    db = tuning.open_database(tmp_path / "db")
    rng = np.random.default_rng(3)

    def pm(shape):
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)

    a, wd = pm((2, 5, 100)), pm((24, 100))
    ba, bb = pm((2, 6, 70)), pm((2, 10, 70))
    xc, wc = pm((1, 70, 6, 6)), pm((8, 70, 3, 3))
    cases = {
        "bdense": ([reference.bitpack_last_ref(a, 0.0),
                    packing.pack_dense_weight(wd, registry.dense_weight_bits(100, tgt))],
                   reference.bdense_ref(a, wd)),
        "bbatch_matmul": ([reference.bitpack_last_ref(ba, 0.0), reference.bitpack_last_ref(bb, 0.0)],
                          reference.bbatch_matmul_ref(ba, bb)),
        "bconv2d": ([reference.bitpack_ref(xc, 0.0),
                     packing.pack_conv_weight(wc, block=registry.bconv_weight_block(tgt))],
                    reference.bconv2d_ref(xc, wc, padding=1, pad_value="one")),
    }
    dev = tvm.cpu()
    for w in seen.values():
        args, ref = cases[w.op]
        recs = tuning._records_for(db, w.mod, identify(tgt).tag, k=100)
        assert len(recs) == 2, w.symbol
        for rec in recs:
            sch = s_tir.Schedule(w.mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            lib = tvm.compile(sch.mod, target=tgt).jit()
            out = tvm.runtime.empty(ref.shape, "int32", dev)
            lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x), dev) for x in args], out)
            np.testing.assert_array_equal(out.numpy(), ref, err_msg=w.symbol)


def test_fused_prelu_conv_tunes_and_replays(tmp_path):
    """A conv with ReActNet's fused epilogue (residual, RPReLU; the PReLU binds its input with a
    Let, which MetaSchedule's flop estimator cannot count) tunes like any other kernel, and the
    best record replays to the reference output."""
    import tvm
    from bnncompile.schedules import packing, reference, registry, tuning

    from bnncompile.tune import tune_workloads

    tgt = _host()
    post = ("residual", "shift", "prelu", "shift")
    collector = tuning.WorkloadCollector()
    registry.make_bconv2d((1, 64, 6, 8), (16, 64, 3, 3), padding=1, with_scale=True,
                          with_bias=True, post=post, target=tgt, tuning=collector)
    (w,) = collector.seen.values()
    res = tune_workloads([w], trials=2, db_dir=tmp_path / "db", build_timeout_s=60)
    assert res.trials_run == 2
    rng = np.random.default_rng(4)
    x = np.where(rng.random((1, 64, 6, 8)) < 0.5, -1.0, 1.0).astype(np.float32)
    wt = np.where(rng.random((16, 64, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    vec = [rng.standard_normal(16).astype(np.float32) for _ in range(5)]
    res_in = rng.standard_normal((1, 16, 6, 8)).astype(np.float32)
    expect = reference.bconv2d_ref(x, wt, padding=1, scale=vec[0], bias=vec[1],
                                   post=[("residual", res_in), ("shift", vec[2]),
                                         ("prelu", vec[3]), ("shift", vec[4])])
    args = [reference.bitpack_ref(x, 0.0), packing.pack_conv_weight(wt, block=registry.bconv_weight_block(tgt)),
            packing.conv_border_table(wt, (6, 8), padding=1), vec[0], vec[1], res_in, vec[2], vec[3], vec[4]]
    from tvm import s_tir

    recs = tuning._records_for(tuning.open_database(tmp_path / "db"), w.mod, identify(tgt).tag, k=100)
    assert len(recs) == 2 and sum(tuning.is_hand_trace(r.trace) for r in recs) == 1
    for rec in recs:
        sch = s_tir.Schedule(w.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        lib = tvm.compile(sch.mod, target=tgt).jit()
        out = tvm.runtime.empty(expect.shape, "float32")
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
        np.testing.assert_allclose(out.numpy(), expect, rtol=1e-5, atol=1e-4)


def _bdense_workload_db(tmp_path):
    """(target, a small bdense workload, an empty database, a schedule of it with a sampled
    tile size: what a search writes)."""
    import tvm
    from bnncompile.schedules import registry, tuning

    tgt = _host()
    collector = tuning.WorkloadCollector()
    registry.make_bdense((1, 4, 128), (16, 128), target=tgt, tuning=collector)
    (w,) = collector.seen.values()
    db = tuning.open_database(tmp_path / "db", create=True)
    sampled = tvm.s_tir.Schedule(w.mod)
    n_loop = sampled.get_loops(sampled.get_sblock("bdense"))[-2]
    sampled.split(n_loop, factors=sampled.sample_perfect_tile(n_loop, n=2))
    return tgt, w, db, sampled


def test_a_hand_record_builds_todays_hand_schedule(tmp_path):
    """When the hand schedule's record is the best, the lookup hands back no schedule (the
    build uses the hand schedule as it is now: a replayed old trace would undo later
    improvements) and the session lists the kernel as hand-won; a searched best replays."""
    import tvm
    from bnncompile.schedules import tuning
    from tvm.s_tir import meta_schedule as ms

    tgt, w, db, sampled = _bdense_workload_db(tmp_path)
    hand = tvm.s_tir.Schedule(w.mod)
    w.hand(hand)
    searched = [sampled]
    wl = db.commit_workload(w.mod)
    tt = tuning.tuning_target(tgt)
    args = ms.arg_info.ArgInfo.from_prim_func(w.mod["main"])
    for sch, secs in ((hand, 1e-4), (searched[-1], 2e-4)):
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [secs], tt, args))
    assert tuning.is_hand_trace(hand.trace) and not tuning.is_hand_trace(searched[-1].trace)
    sch, rec = tuning.lookup_schedule(db, w.mod, tgt)
    assert sch is None and rec is not None and tuning.is_hand_trace(rec.trace)
    session = tuning.DatabaseSession(db, tvm.target.Target(tt), identify(tt).tag)
    assert session.schedule(w.mod["main"], op=w.op, symbol=w.symbol, key=w.key, hand=w.hand,
                            target=tgt) is None
    assert list(session.hand_won) == [w.symbol] and not session.applied and not session.misses
    db.commit_tuning_record(ms.database.TuningRecord(searched[-1].trace, wl, [5e-5], tt, args))
    sch, rec = tuning.lookup_schedule(db, w.mod, tgt)
    assert sch is not None and not tuning.is_hand_trace(rec.trace)
    assert session.schedule(w.mod["main"], op=w.op, symbol=w.symbol, key=w.key, hand=w.hand,
                            target=tgt) is not None
    assert list(session.applied) == [w.symbol] and not session.stale

    # the hand schedule improved since that run: the searched win is unproven, today's hand
    # schedule is built and the sidecar says why
    def better_hand(sch):
        w.hand(sch)
        sch.annotate(sch.get_sblock("bdense_update"), "pragma_better", 1)

    later = tuning.DatabaseSession(db, tvm.target.Target(tt), identify(tt).tag)
    assert later.schedule(w.mod["main"], op=w.op, symbol=w.symbol, key=w.key, hand=better_hand,
                          target=tgt) is None
    assert later.stale == {w.symbol: "the hand schedule changed since it was measured"}
    assert not later.applied


def test_a_searched_record_without_its_hand_record_is_stale(tmp_path):
    """A database whose searched best has no record of the hand schedule it beat (packed
    before the hand record was kept) proves nothing: the hand schedule is built."""
    import tvm
    from bnncompile.schedules import tuning
    from tvm.s_tir import meta_schedule as ms

    tgt, w, db, sampled = _bdense_workload_db(tmp_path)
    tt = tuning.tuning_target(tgt)
    db.commit_tuning_record(ms.database.TuningRecord(
        sampled.trace, db.commit_workload(w.mod), [1e-5], tt,
        ms.arg_info.ArgInfo.from_prim_func(w.mod["main"])))
    session = tuning.DatabaseSession(db, tvm.target.Target(tt), identify(tt).tag)
    assert session.schedule(w.mod["main"], op=w.op, symbol=w.symbol, key=w.key, hand=w.hand,
                            target=tgt) is None
    assert session.stale == {w.symbol: "no record of the hand schedule it was measured against"}
