"""Attention's int8 probability x value product (``compile --attention-precision int8``): both
quantizers bit-exact (levels and peaks) against ``reference.quantize_rows_ref`` /
``quantize_columns_ref``, the int32 sums bit-exact against ``reference.qbatch_matmul_ref``
(int64), the float output bit-exact against the same formula in numpy; every CPU schedule that
runs here ("x86" tensorizes ``vpdpbusd`` where the CPU has AVX-512 VNNI; "cpu" / "arm_cpu"
vectorise int32).  Shapes: CCT's heads (K 64..256, N 64), a reduction that is not a multiple of
4 (zero-padded), column counts that are not a multiple of 16 (no ``vpdpbusd`` blocks)."""
import numpy as np
import pytest
from bnncompile.schedules import quantize as Q
from bnncompile.schedules import reference as ref

from bnncompile import schedules as S

SCHEDS = ["cpu", "x86", "arm_cpu"]
VNNI = {"kind": "llvm", "mcpu": "icelake-server"}  # AVX-512 VNNI code: Ice Lake+, Zen 4+

# (B, M, K, N)
SHAPES = [(4, 16, 64, 64), (2, 5, 10, 16), (1, 3, 7, 32), (3, 4, 12, 24), (1, 8, 256, 48), (2, 28, 20, 64),
          (1, 98, 36, 16)]


def _ids(s):
    return "x".join(map(str, s))


def _target(sched, host, n):
    """The x86 schedule with 16-column blocks runs ``vpdpbusd`` (AVX-512 VNNI code, run where
    the CPU has it); the rest runs the host's AVX2 code."""
    from bnncompile import targets

    if sched != "x86" or n % 16:
        return host
    if "avx512_vnni" not in targets.cpu_flags():
        pytest.skip("the x86 attention kernel needs AVX-512 VNNI; this CPU has none (cpu/arm_cpu ran)")
    return VNNI


def _probabilities(rng, b, m, k, sharp=3.0):
    z = rng.standard_normal((b, m, k)).astype(np.float32) * sharp
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_quantize_rows_exact(shape, sched, rng, host, run_primfunc_outs):
    b, m, k, _ = shape
    p = _probabilities(rng, b, m, k)
    p[0, 0] = 0.0  # a dead row: pmax 0, levels 0, no NaN
    if m > 1:
        p[0, 1] = 1.0 / k  # a flat row: every value at the peak, 255
    expect_q, expect_max = ref.quantize_rows_ref(p)
    pf = S.make_quantize_rows(p.shape, target=host, schedule=sched)
    q, pmax = run_primfunc_outs(pf, [p], [(expect_q.shape, "uint8"), (expect_max.shape, "float32")])
    np.testing.assert_array_equal(pmax, expect_max)
    np.testing.assert_array_equal(q, expect_q)
    assert expect_q.shape[-1] % 4 == 0 and not expect_q[..., k:].any()  # zero-padded to words
    if m > 1:
        assert (expect_q[0, 1, :k] == 255).all() and not expect_q[0, 0].any()


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_quantize_columns_exact(shape, sched, rng, host, run_primfunc_outs):
    b, _, k, n = shape
    v = (rng.standard_normal((b, k, n)) * 2).astype(np.float32)
    v[0, :, 0] = 0.0  # a dead column
    expect_q, expect_max = ref.quantize_columns_ref(v)
    pf = S.make_quantize_columns(v.shape, target=host, schedule=sched)
    q, vmax = run_primfunc_outs(pf, [v], [(expect_q.shape, "int8"), (expect_max.shape, "float32")])
    np.testing.assert_array_equal(vmax, expect_max)
    np.testing.assert_array_equal(q, expect_q)
    assert np.abs(expect_q).max() == Q.V_LEVELS and not expect_q[0, :, 0].any()


@pytest.mark.parametrize("sched", SCHEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_qbatch_matmul_exact(shape, sched, rng, host, run_primfunc, run_primfunc_outs):
    b, m, k, n = shape
    target = _target(sched, host, n)
    pq, pmax = ref.quantize_rows_ref(_probabilities(rng, b, m, k))
    vq, vmax = ref.quantize_columns_ref((rng.standard_normal((b, k, n)) * 2).astype(np.float32))
    # the extremes too: 255 x -127 everywhere in one row (the largest |sum| at this K)
    pq[0, 0, :k], vq[0, :, :, :] = 255, np.where(vq[0] == 0, 0, -Q.V_LEVELS).astype(np.int8)
    acc, y = ref.qbatch_matmul_ref(pq, vq, pmax, vmax)
    sums = S.make_qbatch_matmul(pq.shape, vq.shape, accumulate_only=True, target=target, schedule=sched)
    np.testing.assert_array_equal(run_primfunc(sums, [pq, vq, pmax, vmax], acc.shape, "int32", target=target),
                                  acc)
    pf = S.make_qbatch_matmul(pq.shape, vq.shape, target=target, schedule=sched)
    (got,) = run_primfunc_outs(pf, [pq, vq, pmax, vmax], [(y.shape, "float32")], target=target)
    np.testing.assert_array_equal(got, y)


def test_qbatch_matmul_tensorizes_vpdpbusd():
    """Compile-only: the x86 kernel's inner product is one zmm ``vpdpbusd`` (any CPU)."""
    import tvm

    pf = S.make_qbatch_matmul((2, 8, 64), (2, 16, 64, 4), target=VNNI, schedule="x86")
    asm = tvm.compile(pf, target=tvm.target.Target(VNNI)).mod.inspect_source("s")
    assert "vpdpbusd" in asm and "zmm" in asm


def test_qbatch_matmul_without_vnni_is_the_generic_kernel(host):
    """An x86 target without AVX-512 VNNI gets the plain int32 schedule, not a broken intrinsic."""
    pf = S.make_qbatch_matmul((1, 4, 16), (1, 4, 16, 4), target=host)
    assert str(pf.attrs["global_symbol"]).endswith("_cpu")


def test_attention_numbers_approximate_the_float_product(rng):
    """The quantization's error is what its steps allow: |y - P V| <= sum_k (dp |v| + p dv + dp
    dv) per output, half a step each way (a wrong scale or axis would break this bound)."""
    p = _probabilities(rng, 2, 32, 96)
    v = (rng.standard_normal((2, 96, 64)) * 2).astype(np.float32)
    pq, pmax = Q.quantize_rows(p)
    vq, vmax = Q.quantize_columns(v)
    _, y = Q.attention_product(pq, pmax, vq, vmax)
    exact = p.astype(np.float64) @ v.astype(np.float64)
    dp, dv = pmax[..., None] / 255 / 2, vmax[..., None, :] / 127 / 2
    bound = (dp[..., None] * np.abs(v)[:, None] + p[..., None] * dv[:, None] + dp[..., None] * dv[:, None]).sum(axis=2)
    assert (np.abs(y - exact) <= bound * (1 + 1e-5) + 1e-6).all()
    assert np.abs(y - exact).max() > 1e-6  # it did quantize


@pytest.mark.parametrize("shape", [(4, 16, 64), (2, 7, 20), (1, 5, 12), (3, 1, 16), (1, 1, 4), (2, 3, 196),
                                   (1, 2, 68)], ids=_ids)
def test_softmax_quantize_rows_is_softmax_then_quantize_rows(shape, rng, host, run_primfunc, run_primfunc_outs):
    """The fused kernel (softmax in the quantizer's kernel, one matrix at a time) computes the
    same bytes and peaks as the softmax kernel followed by the quantizer, bit for bit."""
    import tvm
    from bnncompile.schedules.float_glue import softmax_last_func
    from bnncompile.schedules.float_glue.rows import softmax_quantize_rows_func

    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[0, 0] = 0.0  # a flat row: every probability at the peak
    target = tvm.target.Target(host)
    p = run_primfunc(softmax_last_func(shape, target).with_attr("global_symbol", "sm"), [x], shape, "float32")
    expect_q, expect_max = ref.quantize_rows_ref(p)
    fused = softmax_quantize_rows_func(shape, target).with_attr("global_symbol", "smq")
    q, pmax = run_primfunc_outs(fused, [x], [(expect_q.shape, "uint8"), (expect_max.shape, "float32")])
    np.testing.assert_array_equal(pmax, expect_max)
    np.testing.assert_array_equal(q, expect_q)


def test_softmax_quantize_rows_refuses_partial_words(host):
    import tvm
    from bnncompile.schedules.float_glue.rows import softmax_quantize_rows_func

    with pytest.raises(ValueError, match="not whole 4-byte words"):
        softmax_quantize_rows_func((2, 7, 10), tvm.target.Target(host))
