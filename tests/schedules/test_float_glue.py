"""float_glue rules: each one applies to the legalized PrimFuncs it is meant for, produces a
parallel / vectorised loop nest, and computes the same values as numpy.

Tolerance: float32 with rtol=1e-5, atol=1e-5 (RowReduction reassociates sums into vector
partial sums, which changes rounding only; element-wise rules are bit-exact up to libm)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from bnncompile.schedules import float_glue
from tvm import relax

R = relax.op
TGT = tvm.target.Target({"kind": "llvm"})
RTOL = ATOL = 1e-5


def _legalized(fn, shapes):
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit_output(fn(*xs))
        bb.emit_func_output(out)
    mod = bb.get()
    for p in (relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FuseOps(), relax.transform.FuseTIR()):
        mod = p(mod)
    return mod


def _prim_funcs(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _rule_for(func):
    for r in float_glue.rules():
        if r.apply(func, TGT, False) is not None:
            return type(r.rule).__name__
    return None


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(x, g, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def _bn_prelu(x, g, b, mean, var, alpha):
    y = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    y = y * g[None, :, None, None] + b[None, :, None, None]
    return np.where(y >= 0, y, y * alpha[None, :, None, None])


def _bn_prelu_relax(x, g, b, mean, var, alpha):
    y = relax.TupleGetItem(R.nn.batch_norm(x, g, b, mean, var, axis=1, epsilon=1e-5, training=False), 0)
    a = R.reshape(alpha, (1, -1, 1, 1))
    return R.where(R.greater_equal(y, relax.const(0.0, "float32")), y, R.multiply(y, a))


# name -> (relax fn, numpy fn, input shapes, rule expected on the main glue PrimFunc)
CASES = {
    "mean_hw_nchw": (lambda x: R.mean(x, axis=[2, 3], keepdims=True),
                     lambda x: x.mean((2, 3), keepdims=True), [(1, 24, 20, 20)], "RowReduction"),
    "mean_hw_odd": (lambda x: R.mean(x, axis=[2, 3]),
                    lambda x: x.mean((2, 3)), [(2, 10, 6, 6)], "RowReduction"),
    "mean_cube": (lambda x: R.mean(R.multiply(R.multiply(x, x), x), axis=[2, 3], keepdims=True),
                  lambda x: (x * x * x).mean((2, 3), keepdims=True), [(1, 16, 8, 12)], "RowReduction"),
    # partial-sum lanes divide W (8 | 56) or are W itself (7): contiguous loads, see below
    "mean_hw_56": (lambda x: R.mean(x, axis=[2, 3], keepdims=True),
                   lambda x: x.mean((2, 3), keepdims=True), [(1, 6, 56, 56)], "RowReduction"),
    "mean_hw_7": (lambda x: R.mean(x, axis=[2, 3], keepdims=True),
                  lambda x: x.mean((2, 3), keepdims=True), [(1, 40, 7, 7)], "RowReduction"),
    # one output row (threshold MLPs, classifier): W streamed row by row, column chunks per task
    "gemv_mlp": (lambda x, w: R.nn.relu(R.matmul(x, w)), lambda x, w: np.maximum(x @ w, 0),
                 [(1, 64), (64, 1024)], "SpatialReduction"),
    "gemv_head": (lambda x, w: R.matmul(x, w), lambda x, w: x @ w, [(1, 96), (96, 200)],
                  "SpatialReduction"),
    "layer_norm_tokens": (lambda x, g, b: R.nn.layer_norm(x, g, b, axes=[-1]), _layer_norm,
                          [(1, 17, 96), (96,), (96,)], "RowReduction"),
    "softmax_tokens": (lambda x: R.nn.softmax(x, axis=-1), _softmax, [(1, 3, 17, 40)], "Reduction"),
    "matmul_attn_v": (lambda a, v: R.matmul(a, v), lambda a, v: a @ v,
                      [(1, 3, 17, 17), (1, 3, 17, 32)], "SpatialReduction"),
    "token_mean": (lambda x: R.mean(x, axis=[1]), lambda x: x.mean(1), [(2, 17, 48)], "SpatialReduction"),
    "gelu_tokens": (lambda x: R.nn.gelu(x), _gelu, [(1, 17, 64)], "Injective"),
    "bn_prelu_nchw": (_bn_prelu_relax, _bn_prelu,
                      [(1, 24, 7, 16), (24,), (24,), (24,), (24,), (24,)], "Injective"),
    # H*W = 63: no whole vector divides the tail, so the rule only parallelises (still correct)
    "bn_prelu_odd": (_bn_prelu_relax, _bn_prelu,
                     [(1, 24, 7, 9), (24,), (24,), (24,), (24,), (24,)], "Injective"),
}
VECTORIZED = set(CASES) - {"bn_prelu_odd"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_applies_and_matches_numpy(name):
    fn, ref_fn, shapes, expect = CASES[name]
    mod = _legalized(fn, shapes)
    funcs = _prim_funcs(mod)
    # the reduction (if any) is the PrimFunc under test; FuseOps may leave e.g. x*x*x separate
    red = [n for n in funcs if "mean" in n or "red" in funcs[n].script()]
    main_name = red[0] if red else max(funcs, key=lambda n: len(funcs[n].script()))
    assert _rule_for(funcs[main_name]) == expect, main_name

    with TGT:
        scheduled = float_glue.schedule_pass()(mod)
    for fname, f in _prim_funcs(scheduled).items():
        assert f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False)), fname
        text = f.script()
        assert "T.parallel(" in text or "T.vectorized(" in text, (fname, text)
    main_text = _prim_funcs(scheduled)[main_name].script()
    assert "T.parallel(" in main_text, main_text
    if name in VECTORIZED:
        assert "T.vectorized(" in main_text, main_text

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype("float32") for s in shapes]
    if name.startswith("bn_prelu"):
        xs[4] = np.abs(xs[4]) + 0.5  # a variance
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=TGT), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(x) for x in xs]).numpy()
    ref = ref_fn(*[x.astype("float64") for x in xs]).astype("float32")
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mcpu", ["haswell", "znver3"])
def test_row_reduction_builds_for_avx2(mcpu):
    """CI may be AVX2-only: the vector partial sums must build there too (no run needed)."""
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    mod = _legalized(lambda x: R.mean(x, axis=[2, 3], keepdims=True), [(1, 32, 56, 56)])
    with tgt:
        scheduled = float_glue.schedule_pass()(mod)
    assert "rf" in scheduled.script()
    tvm.compile(scheduled, target=tgt)


def _assert_lanes_within_rows(text: str, w: int) -> None:
    """Some loop is vectorised and no vector lane var is divided / taken modulo by W."""
    import re

    lanes = re.findall(r"for (\w+) in T\.vectorized", text)
    assert lanes, text
    for line in text.splitlines():
        if f"// T.int64({w})" in line or f"% T.int64({w})" in line:
            assert not any(re.search(rf"\b{v}\b", line) for v in lanes), line


@pytest.mark.parametrize("shape", [(1, 6, 56, 56), (1, 4, 112, 112), (1, 40, 7, 7)])
def test_mean_reads_whole_rows(shape):
    """No lane group straddles two rows: the read index has no ``// W`` (scalarised gathers)."""
    mod = _legalized(lambda x: R.mean(x, axis=[2, 3], keepdims=True), [shape])
    with TGT:
        text = "\n".join(f.script() for f in _prim_funcs(float_glue.schedule_pass()(mod)).values())
    _assert_lanes_within_rows(text, shape[-1])


def test_gemv_streams_weight_rows():
    """The reduction loop sits outside the column loops of a task: W is read row by row."""
    mod = _legalized(lambda x, w: R.matmul(x, w), [(1, 64), (64, 1024)])
    with TGT:
        (text,) = [f.script() for f in _prim_funcs(float_glue.schedule_pass()(mod)).values()]
    assert "T.parallel(T.int64(2))" in text, text  # two 512-column tasks
    assert "T.grid(T.int64(64), T.int64(" in text, text  # k, then the column vectors


@pytest.mark.parametrize("shape", [(1, 4, 56, 56), (1, 4, 28, 28), (1, 4, 7, 7)])
def test_elementwise_vectorises_within_rows(shape):
    """H*W is not fused before vectorising when W is no multiple of the lanes: each vector stays
    inside one row (no ``// W`` in the indices, which compiled to scalar gathers)."""
    mod = _legalized(_bn_prelu_relax, [shape] + [(shape[1],)] * 5)
    with TGT:
        (text,) = [f.script() for f in _prim_funcs(float_glue.schedule_pass()(mod)).values()]
    _assert_lanes_within_rows(text, shape[-1])


@pytest.mark.parametrize("shape", [(1, 6, 196, 196), (2, 3, 7), (4, 256), (1, 3, 1009), (3, 1), (2, 64),
                                   (2, 5, 65), (1, 2, 68)])
# AVX2 code that runs on Intel too ("znver3" may emit AMD-only SSE4a; kernel_harness.HOST)
@pytest.mark.parametrize("mcpu", ["haswell", None])
def test_softmax_last_kernel_matches_reference(shape, mcpu, rng):
    """The scheduled softmax (rows in parallel, partial max/sum vectors) against float64 numpy;
    fast_exp's relative error is ~1e-7.  Rows with a big spread make the max subtraction matter."""
    from bnncompile.schedules import reference

    tgt = tvm.target.Target({"kind": "llvm", **({"mcpu": mcpu} if mcpu else {})})
    func = float_glue.softmax_last_func(shape, tgt)
    text = func.script()
    assert "T.parallel(" in text
    if shape[-1] not in (1, 1009):  # a long prime row runs serially, a unit row has no vector
        assert "T.vectorized(" in text
    x = (rng.standard_normal(shape) * 20).astype(np.float32)
    out = tvm.runtime.empty(shape, "float32")
    tvm.compile(func, target=tgt)["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), reference.softmax_ref(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mcpu,n,lanes", [("icelake-server", 196, {"32", "4"}), ("icelake-server", 64, {"32"}),
                                           ("haswell", 196, {"32", "4"}), ("haswell", 64, {"32"}),
                                           ("icelake-server", 68, {"32", "4"})])
def test_softmax_chunks_fit_the_registers(mcpu, n, lanes):
    """Element-wise chunks of up to 4 AVX2 registers, but 2 AVX-512 ones (4 zmm of exponential
    temporaries spill: [1,4,64,64] ran 2.5x slower as one 64-lane chunk); a row that is no
    multiple of that in whole chunks and one short tail (196 = 6 x 32 + 4, not 7 x 28: a
    zmm, a ymm and an xmm instruction per 28).  Compile only."""
    import re

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    text = float_glue.softmax_last_func((1, 4, n, n), tgt).script()
    lines = text.splitlines()
    found = set()
    for i, line in enumerate(lines):  # the loop right around each exponential / probability block
        if re.search(r'T\.sblock\("(T_fast_exp|sm_out)(_\w+\d)?"\)', line):
            loop = next(ln for ln in reversed(lines[:i]) if ln.strip().startswith("for "))
            # T.vectorized(n) or, for a partitioned tail, T.vectorized(start, stop)
            a, b = re.search(r"in T\.vectorized\((\d+)(?:, (\d+))?\)", loop).groups()
            found.add(str(int(b) - int(a)) if b else a)
    assert found == lanes, text


@pytest.mark.parametrize("shape,axis,kernel", [
    ((1, 2, 5, 12), -1, True), ((1, 2, 5, 12), 3, True), ((1, 2, 5, 12), 1, False),
    # only unit axes after it (CCT's sequence pooling over tokens): the kernel on a reshaped view
    ((1, 40, 1), 1, True), ((2, 3, 1, 1), 1, True), ((40, 1), 0, True), ((40,), 0, True)])
def test_softmax_legalization_uses_the_kernel_on_the_last_axis(shape, axis, kernel, rng):
    """compile's pipeline: softmax over the last axis, or over one followed only by unit axes,
    becomes the scheduled kernel, any other axis TOPI's fast_softmax; both match numpy."""
    from bnncompile.compiler import relax_pipeline

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(R.nn.softmax(x, axis=axis))
        bb.emit_func_output(out)
    with TGT:
        lowered = relax_pipeline(TGT)(bb.get())
        ex = tvm.compile(bb.get(), target=TGT, relax_pipeline=relax_pipeline(TGT))
    names = [gv.name_hint for gv in lowered.functions]
    assert any(n.startswith("softmax_last") for n in names) == kernel, names
    xv = (rng.standard_normal(shape) * 5).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy()
    e = np.exp(xv.astype(np.float64) - xv.max(axis, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis, keepdims=True), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fast_math", [True, False])
@pytest.mark.parametrize("divisor", ["scalar", "tensor"])
def test_division_by_a_constant_becomes_a_multiply_under_fast_math(fast_math, divisor, rng):
    """compile's fast-math legalization: ``x / c`` with a scalar constant ``c`` (GELU's x / sqrt 2)
    is ``x * (1 / c)``, within 2 ulp of the quotient; a tensor divisor, or ``--exact-math``,
    keeps the division (exact)."""
    from bnncompile.compiler import relax_pipeline

    shape = (2, 3, 40)
    c = np.float32(1.4142135)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    y = relax.Var("y", relax.TensorType(shape, "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            d = relax.const(c) if divisor == "scalar" else y
            out = bb.emit_output(R.divide(x, d))
        bb.emit_func_output(out)
    with TGT:
        lowered = relax_pipeline(TGT, fast_math=fast_math)(bb.get())
        ex = tvm.compile(bb.get(), target=TGT, relax_pipeline=relax_pipeline(TGT, fast_math=fast_math))
    text = lowered.script()
    multiplies = divisor == "scalar" and fast_math
    assert (" / " not in text.split("def main")[0]) == multiplies, text[:2000]
    xv = (rng.standard_normal(shape) * 7).astype(np.float32)
    yv = np.full(shape, c, np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(yv)).numpy()
    exact = xv / c
    if multiplies:
        assert np.max(np.abs(got - exact) / np.spacing(np.abs(exact))) <= 2
    else:
        np.testing.assert_array_equal(got, exact)


def _gelu_erf(x):
    """GELU as ONNX files spell it (``Erf``), which compile legalizes to TVM's fast erf."""
    c = lambda v: relax.const(v, "float32")  # noqa: E731
    return R.multiply(R.multiply(x, c(0.5)), R.add(c(1.0), R.erf(R.multiply(x, c(2 ** -0.5)))))


@pytest.mark.parametrize("fn,width,lanes", [
    (_gelu_erf, 64, 32),  # fast erf: a polynomial, two register tiles
    (_gelu_erf, 48, 16),  # the wide tile does not divide the row: the usual one
    (lambda x: R.nn.relu(R.add(x, x)), 64, 16),  # no polynomial: the usual tile
])
def test_polynomial_elementwise_takes_wider_vectors(fn, width, lanes, rng):
    """compile's pipeline on AVX2 (16-float tiles): an element-wise kernel with a polynomial
    body (fast-math GELU) vectorises over twice the lanes, anything else over the usual ones;
    the values match numpy either way."""
    import re

    from bnncompile.compiler import relax_pipeline

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})  # runs on Intel too
    shape = (1, 7, width)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(fn(x))
        bb.emit_func_output(out)
    with tgt:
        lowered = relax_pipeline(tgt)(bb.get())
        ex = tvm.compile(bb.get(), target=tgt, relax_pipeline=relax_pipeline(tgt))
    text = "\n".join(f.script() for f in _prim_funcs(lowered).values())
    assert re.findall(r"in T\.vectorized\(T\.int64\((\d+)\)\)", text) == [str(lanes)], text
    xv = (rng.standard_normal(shape) * 3).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy()
    x64 = xv.astype(np.float64)
    want = _gelu(x64) if fn is _gelu_erf else np.maximum(2 * x64, 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mcpu,lanes,rows", [("icelake-server", 32, 7), ("haswell", 16, 4)])
def test_matmul_register_tile_fits_the_vector_registers(mcpu, lanes, rows, rng):
    """Attention's P.V ([6, 196, 196] @ [6, 196, 64]) through compile's pipeline: AVX-512 (32
    registers) tiles 7 rows x 2 vectors, 14 accumulators; AVX2 (16) 4 rows x 16 floats (two
    registers each, ``float_glue.common.vector_lanes``), 8 accumulators.  The AVX-512
    build is only compiled here unless the CPU has it; the AVX2 one runs against numpy."""
    import re

    from bnncompile.compiler import relax_pipeline

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    bb = relax.BlockBuilder()
    p = relax.Var("p", relax.TensorType((1, 6, 196, 196), "float32"))
    v = relax.Var("v", relax.TensorType((1, 6, 196, 64), "float32"))
    with bb.function("main", [p, v]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(p, v))
        bb.emit_func_output(out)
    with tgt:
        lowered = relax_pipeline(tgt)(bb.get())
    text = "\n".join(f.script() for f in _prim_funcs(lowered).values())
    assert str(lanes) in re.findall(r"in T\.vectorized\(T\.int64\((\d+)\)\)", text), text
    assert re.search(rf"in T\.unroll\(T\.int64\({rows}\)\)", text), text
    if mcpu == "haswell":
        ex = tvm.compile(bb.get(), target=tgt, relax_pipeline=relax_pipeline(tgt))
        pv, vv = (rng.standard_normal(s).astype(np.float32) for s in ((1, 6, 196, 196), (1, 6, 196, 64)))
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(pv), tvm.runtime.tensor(vv)).numpy()
        np.testing.assert_allclose(got, pv @ vv, rtol=1e-4, atol=1e-3)
