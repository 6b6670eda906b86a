import os
import sys
import zlib

import pytest

# The package is installed as bnncompile.schedules later; until then import it from the repo root.
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np
import tvm

# AVX2 code that runs on any AVX2 x86, Zen 3 and Intel alike (the x86-avx2 target).  Not "znver3":
# LLVM may then emit AMD-only SSE4a (insertq seen in a zero-padded bconv2d), which faults on Intel.
HOST = {"kind": "llvm", "mcpu": "haswell"}
_LIBS = {}


def run_primfunc(pf, inputs, out_shape, out_dtype, target=HOST):
    """Compile (cached per global_symbol + target, symbols are unique per shape) and run."""
    sym = str(pf.attrs["global_symbol"])
    key = (sym, repr(sorted(target.items())))
    if key not in _LIBS:
        _LIBS[key] = tvm.compile(pf, target=tvm.target.Target(target)).jit()
    out = tvm.runtime.empty(tuple(out_shape), out_dtype)
    _LIBS[key][sym](*[tvm.runtime.tensor(np.array(a, order="C")) for a in inputs], out)  # 0-d stays 0-d
    return out.numpy()


@pytest.fixture
def rng(request):
    # Seeded from the test id: every parametrisation is reproducible on its own.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
