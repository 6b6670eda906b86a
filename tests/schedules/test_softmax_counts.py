"""The softmax of binary scores from their popcounts (``compute.softmax_counts``): bit for bit
the scheduled softmax of the float scores ``float32(k - 2c) * alpha`` (``softmax_last_func``),
and its int8 attention variant bit for bit the fused softmax + row quantizer, on the AVX-512
table lookups (``vpermi2ps``, run where the CPU has AVX-512) and on the AVX2 one-hot sums;
both against float64 numpy too.  Rows of every length the lookups see: a multiple of 16, 196
(padded to 208), shorter than a vector, one element."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from bnncompile.schedules import compute
from bnncompile.schedules import reference as ref
from bnncompile.schedules.float_glue.count_softmax import (
    softmax_counts_func,
    softmax_counts_quantize_rows_func,
    table_lookup_available,
)
from bnncompile.schedules.float_glue.rows import softmax_last_func, softmax_quantize_rows_func

from bnncompile import targets

AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}  # vpermi2ps: AVX-512 F
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
TARGETS = {"avx512": AVX512, "avx2": AVX2}

# (shape, k, alpha): attention's heads of 64 (k + 1 = 65 scores: two vpermi2ps groups and a
# broadcast), CCT-14's 196 tokens, a vpermps group (k = 100, 101 scores), one group (k = 31),
# eight (k = 255), unscaled integer scores (alpha None), rows of one
CASES = [((2, 16, 32), 64, 0.125), ((1, 3, 196), 64, 0.125), ((2, 5, 20), 100, 0.5),
         ((2, 4, 33), 31, None), ((2, 7, 48), 255, 2.0 ** -4), ((3, 2, 1), 16, 0.25),
         ((1, 4, 64), 32, 0.125)]


def _ids(c):
    return f"{'x'.join(map(str, c[0]))}-k{c[1]}-a{c[2]}"


def _target(name):
    if name == "avx512" and "avx512f" not in targets.cpu_flags():
        pytest.skip("the lookups need AVX-512 F to run; this CPU has none (the AVX2 sums ran)")
    return TARGETS[name]


def _counts(shape, k, rng):
    c = rng.integers(0, k + 1, size=shape).astype(np.uint8)
    flat = c.reshape(-1, shape[-1])
    flat[0] = k  # a row of all mismatches: every offset 0
    if len(flat) > 1:
        flat[1, :] = rng.integers(0, 2, shape[-1]) * k  # offsets 0 and k only
    if len(flat) > 2:
        flat[2, 0] = 0  # the extremes in one row
        flat[2, -1] = k
    return c


def _run(func, target, inputs, outs):
    lib = tvm.compile(func, target=tvm.target.Target(target)).jit()
    res = [tvm.runtime.empty(tuple(s), d) for s, d in outs]
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in inputs], *res)
    return [r.numpy() for r in res]


@pytest.mark.parametrize("tname", sorted(TARGETS))
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_softmax_counts_is_the_softmax_of_the_scores(case, tname, rng):
    shape, k, alpha = case
    target = _target(tname)
    c = _counts(shape, k, rng)
    s = ref.binary_scores(c, k, alpha)
    t = tvm.target.Target(target)
    steps = compute.score_steps(k, alpha)
    (p,) = _run(softmax_counts_func(shape, k, alpha, t), target, [c, steps], [(shape, "float32")])
    (expect,) = _run(softmax_last_func(shape, t), target, [s], [(shape, "float32")])
    np.testing.assert_array_equal(p.view(np.uint32), expect.view(np.uint32))
    np.testing.assert_allclose(p, ref.softmax_counts_ref(c, k, alpha), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tname", sorted(TARGETS))
@pytest.mark.parametrize("case", [c for c in CASES if c[0][-1] % 4 == 0],
                         ids=[_ids(c) for c in CASES if c[0][-1] % 4 == 0])
def test_softmax_counts_quantize_rows_is_the_fused_kernel(case, tname, rng):
    shape, k, alpha = case
    target = _target(tname)
    c = _counts(shape, k, rng)
    t = tvm.target.Target(target)
    outs = [(shape, "uint8"), (shape[:2], "float32")]
    q, pmax = _run(softmax_counts_quantize_rows_func(shape, k, alpha, t), target,
                   [c, compute.score_steps(k, alpha)], outs)
    eq, emax = _run(softmax_quantize_rows_func(shape, t), target, [ref.binary_scores(c, k, alpha)], outs)
    np.testing.assert_array_equal(pmax.view(np.uint32), emax.view(np.uint32))
    np.testing.assert_array_equal(q, eq)


def test_score_steps_are_exact_or_none():
    steps = compute.score_steps(64, 0.125)
    assert steps.dtype == np.float32 and steps.shape == (96,)
    c = np.arange(65)
    scores = (64 - 2 * c).astype(np.float32) * np.float32(0.125)
    assert (scores - scores[0] == steps[:65]).all() and (steps[65:] == steps[64]).all()
    assert compute.score_steps(48, float(np.float32(48 ** -0.5))) is None  # 1/sqrt(48): not exact
    assert compute.score_steps(256, 0.125) is None  # counts past a byte
    assert compute.score_steps(64, -0.125) is None  # the best score would be the most mismatches
    assert compute.score_steps(20, None).shape == (32,) and compute.score_steps(200, 0.5).shape == (224,)


def test_softmax_counts_refuses_inexact_scores_and_other_ranks():
    with pytest.raises(ValueError, match="not exact float32 steps"):
        softmax_counts_func((1, 2, 8), 48, float(np.float32(48 ** -0.5)), tvm.target.Target(AVX2))
    with pytest.raises(ValueError, match=r"expected counts \[B, M, N\]"):
        softmax_counts_func((1, 2, 2, 8), 64, 0.125, tvm.target.Target(AVX2))


def test_table_lookup_is_avx512_only_and_built_as_vpermi2ps():
    """Where the lookups run: AVX-512 x86 only (so AVX2 and ARM builds keep the float scores);
    the AVX-512 build is checked on any CPU (compiled, not run)."""
    assert table_lookup_available(tvm.target.Target(AVX512))
    assert not table_lookup_available(tvm.target.Target(AVX2))
    assert not table_lookup_available(tvm.target.Target(targets.tvm_target(targets.resolve("aarch64-neon"))))
    func = softmax_counts_func((1, 4, 196), 64, 0.125, tvm.target.Target(AVX512))
    asm = tvm.compile(func, target=tvm.target.Target(AVX512)).mod.inspect_source("asm")
    assert "vpermi2ps" in asm or "vpermt2ps" in asm
    from bnncompile.schedules.x86_intrinsics import table_lookup

    with pytest.raises(ValueError, match="multiple of 32"):
        table_lookup(48)
