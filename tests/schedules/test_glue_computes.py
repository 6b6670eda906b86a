"""The computes TVM's float glue schedules (no hand schedule): DynamicSign as float ±1, unpacking
packed words (debug builds), means of x**p over H, W — each against its numpy reference.

±1 outputs and unpacked bits must be bit-exact; the means are float32 sums in another order
than the float64 reference: rtol 1e-5 (a sum of <= 784 terms of magnitude <= 27)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from bnncompile.schedules import compute
from bnncompile.schedules import reference as ref
from tvm import te


def _run(fn, inputs, *args, **kwargs):
    """Build ``fn`` on placeholders of ``inputs``' shapes with TVM's default schedule, run it."""
    phs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = fn(*phs, *args, **kwargs)
    lib = tvm.compile(te.create_prim_func([*phs, out]), target={"kind": "llvm"})
    res = tvm.runtime.empty([int(s) for s in out.shape], out.dtype)
    lib["main"](*[tvm.runtime.tensor(np.array(a, order="C")) for a in inputs], res)  # 0-d stays 0-d
    return res.numpy()


@pytest.mark.parametrize("x_shape,t_shape", [((2, 3, 4, 5), (2, 3, 1, 1)), ((2, 7, 6), (2, 1, 6)),
                                             ((3, 65), ()), ((2, 3, 4, 5), None)])
def test_dynamic_sign(x_shape, t_shape, rng):
    x = rng.integers(-2, 3, x_shape).astype(np.float32)  # integer values: many ties x == t
    x.flat[0] = np.nan
    x.flat[1] = -0.0
    if t_shape is None:
        np.testing.assert_array_equal(_run(compute.dynamic_sign, [x]), ref.dynamic_sign_ref(x))
        return
    t = rng.integers(-1, 2, t_shape).astype(np.float32)
    np.testing.assert_array_equal(_run(compute.dynamic_sign, [x, t]), ref.dynamic_sign_ref(x, t))


@pytest.mark.parametrize("shape,layout", [((2, 65, 3, 4), "nchw"), ((1, 130, 2, 2), "nchw"),
                                          ((3, 5, 63), "last"), ((2, 129), "last")])
def test_unpack_bits_float(shape, layout, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    words = ref.bitpack_ref(x, 0.0) if layout == "nchw" else ref.bitpack_last_ref(x, 0.0)
    got = _run(compute.unpack_bits_float, [words], shape, layout)
    expect = ref.unpack_bits_ref(words, shape, layout)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got, ref.dynamic_sign_ref(x))  # the round trip is the sign


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 4, 1, 784)])
def test_power_mean(shape, p, keepdims, rng):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    got = _run(compute.power_mean, [x], p, keepdims=keepdims)
    np.testing.assert_allclose(got, ref.power_mean_ref(x, p, keepdims=keepdims), rtol=1e-5, atol=1e-6)


def test_unpack_rejects_unknown_layout():
    words = te.placeholder((1, 2, 2, 1), "uint64")
    with pytest.raises(ValueError, match="layout"):
        compute.unpack_bits_float(words, (1, 64, 2, 2), "nhwc")
