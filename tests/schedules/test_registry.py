"""Dispatch, PrimFunc attributes, and codegen checks for targets that cannot run here
(AVX-512 asm, aarch64 NEON asm, CUDA source): build-only."""
import re

import pytest
import tvm

from bnncompile import schedules as S

ZEN3 = {"kind": "llvm", "mcpu": "znver3"}
ZEN4 = {"kind": "llvm", "mcpu": "znver4"}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})

CONV = dict(data_shape_nchw=(1, 128, 7, 7), weight_pm1_shape=(16, 128, 3, 3), padding=1)


def _all_ops(target):
    return {
        "bitpack": S.make_bitpack((1, 65, 5, 5), (1, 65, 1, 1), target),
        "bitpack_last": S.make_bitpack_last((2, 5, 130), (1, 1, 130), target),
        "bconv2d": S.make_bconv2d(**CONV, with_scale=True, with_bias=True, target=target),
        "bconv2d_one": S.make_bconv2d(**CONV, pad_value="one", target=target),
        "bdense": S.make_bdense((2, 5, 130), (16, 130), with_scale=True, target=target),
        "bdense_cut": S.make_bdense((2, 5, 130), (16, 130), with_cut=True, target=target),
        "bdense_residual": S.make_bdense((2, 5, 130), (16, 130), with_scale=True, with_residual=True,
                                         target=target),
        "bbatch_matmul": S.make_bbatch_matmul((2, 8, 64), (2, 16, 64), target=target),
        "prelu_stats": S.make_prelu_stats((2, 8, 1, 49), (2, 8, 1, 1), (1, 8, 1, 1), (2, 8, 1, 1), (1, 3),
                                          target=target),
        "maxpool2d_nchwc": S.make_maxpool2d((1, 2, 9, 9, 8), kernel=3, stride=2, padding=1, target=target),
        "avgpool2d": S.make_avgpool2d((1, 8, 10, 10), kernel=2, target=target),
    }


@pytest.mark.parametrize("target,key", [
    ({"kind": "llvm"}, "x86"), (ZEN3, "x86"), (ARM, "arm_cpu"), (CUDA, "cuda"),
    ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "cpu"),
], ids=["llvm", "znver3", "aarch64", "cuda", "riscv64-generic"])
def test_target_key(target, key):
    assert S.target_key(target) == key


def test_primfunc_attrs_and_unique_symbols():
    fs = _all_ops(ZEN3)
    syms = [str(f.attrs["global_symbol"]) for f in fs.values()]
    assert len(set(syms)) == len(syms)
    for f in fs.values():
        assert bool(f.attrs["tirx.is_scheduled"])
    names = [str(n) for n in fs["bconv2d"].attrs["bnn.param_names"]]
    assert names == ["data", "weight", "border_table", "scale", "bias", "bconv_out"]
    assert [str(n) for n in fs["bconv2d_one"].attrs["bnn.param_names"]] == ["data", "weight", "bconv_out"]
    other = S.make_bconv2d((1, 128, 9, 7), (16, 128, 3, 3), padding=1, target=ZEN3)
    assert str(other.attrs["global_symbol"]) != str(S.make_bconv2d(**CONV, target=ZEN3).attrs["global_symbol"])


def _asm(pf, target):
    return tvm.compile(pf, target=tvm.target.Target(target)).mod.inspect_source("asm")


def test_x86_avx2_popcount_is_vectorised():
    asm = _asm(S.make_bconv2d(**CONV, target=ZEN3), ZEN3)
    assert "vpshufb" in asm  # AVX2 nibble-LUT popcount across output channels


def test_x86_avx512_vpopcntq():
    asm = _asm(S.make_bconv2d(**CONV, target=ZEN4), ZEN4)
    assert "vpopcntq" in asm


ALL_OPS = ["bitpack", "bitpack_last", "bconv2d", "bconv2d_one", "bdense", "bdense_cut", "bdense_residual",
           "bbatch_matmul", "prelu_stats", "maxpool2d_nchwc", "avgpool2d"]


@pytest.mark.parametrize("op", ALL_OPS)
def test_aarch64_neon_builds(op):
    asm = _asm(_all_ops(ARM)[op], ARM)
    if op.startswith(("bconv", "bdense", "bbatch")):
        assert re.search(r"^\s*cnt\s+v\d+\.(16b|8b)", asm, re.M), "NEON cnt missing"


@pytest.mark.parametrize("op", ALL_OPS)
def test_cuda_builds(op):
    ex = tvm.compile(_all_ops(CUDA)[op], target=CUDA)
    assert len(ex.mod.imports) == 1, "no device module: loops were not bound"
    src = ex.mod.imports[0].inspect_source("cuda")
    assert "threadIdx.x" in src  # blockIdx is elided when one block suffices
    if op.startswith(("bconv", "bdense", "bbatch")):
        assert "__popcll" in src


def test_half_word_dense_only_where_measured():
    """32-bit dense weights on Zen 4 for rows of at most 6 words; 64-bit everywhere else."""
    assert S.dense_weight_bits(384, ZEN4) == 32 and S.dense_weight_bits(385, ZEN4) == 64
    for other in (ZEN3, ARM, CUDA, {"kind": "llvm", "mcpu": "icelake-server"}, None):
        assert S.dense_weight_bits(256, other) == 64, other
    asm = _asm(S.make_bdense((1, 8, 256), (32, 256), with_scale=True, target=ZEN4), ZEN4)
    assert "vpopcntd" in asm


def test_token_threshold_is_a_cpu_kernel():
    """The DySign pool + MLP kernel builds for NEON; CUDA keeps TVM's mean and matmuls (the
    converter requires a CPU target)."""
    _asm(S.make_token_threshold((1, 9, 64), 4, target=ARM), ARM)
    with pytest.raises(ValueError, match="CPU kernel"):
        S.make_token_threshold((1, 9, 64), 4, target=CUDA)
