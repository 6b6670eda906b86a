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

HOST = {"kind": "llvm", "mcpu": "znver3"}  # this box (Zen 3, AVX2); any AVX2 x86 runs it
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
