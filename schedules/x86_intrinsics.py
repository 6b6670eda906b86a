"""x86 tensor intrinsics for ``s_tir.Schedule.tensorize``, registered with TVM on import.

``bnn_avx2_pmaddwd_8x2``: ``C[i] += A[0] * B[i, 0] + A[1] * B[i, 1]`` for 8 int32 outputs, one
``vpmaddwd`` (AVX2; AVX-512 CPUs run it too): the int16 activation pair is broadcast as one
32-bit word, multiplied with 8 weight pairs, and the adjacent products summed into int32.  The
quantized conv's (``compute.qconv2d_blocked``) innermost ``(ob, j)`` loops, with its register
tile (``C``) in ``generic.TILE_SCOPE``.

``bnn_avx512_vpdpbusd_16x4``: ``C[i] += sum_k A[k] * B[i, k]`` for 16 int32 outputs, one
``vpdpbusd`` (AVX-512 VNNI): 4 unsigned activation bytes broadcast as one 32-bit word, times 16
groups of 4 signed weight bytes, summed into int32 without saturation: the int8 conv's offset
quads (``quantize.VNNI_OFFSET``), 64 MACs per instruction.
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .generic import TILE_SCOPE

PMADDWD_8X2 = "bnn_avx2_pmaddwd_8x2"
VPDPBUSD_16X4 = "bnn_avx512_vpdpbusd_16x4"


def _dot_desc(lanes: int, group: int, a_dtype: str, b_dtype: str):
    """``C[i] += sum_k A[k] * B[i, k]`` in int32 for ``lanes`` outputs and ``group`` products
    each: the computation both intrinsics replace (``C`` the register tile, TILE_SCOPE)."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=TILE_SCOPE)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


@T.prim_func(s_tir=True)
def _pmaddwd_impl(A: T.Buffer((2,), "int16", offset_factor=1),
                  B: T.Buffer((8, 2), "int16", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1, scope=TILE_SCOPE)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(pair, 8), dtype="int16x16"),
            B.vload([0, 0], dtype="int16x16"), dtype="int32x8")


TensorIntrin.register(PMADDWD_8X2, _dot_desc(8, 2, "int16", "int16"), _pmaddwd_impl, override=True)


@T.prim_func(s_tir=True)
def _vpdpbusd_impl(A: T.Buffer((4,), "uint8", offset_factor=1),
                   B: T.Buffer((16, 4), "int8", offset_factor=1),
                   C: T.Buffer((16,), "int32", offset_factor=1, scope=TILE_SCOPE)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # apache-tvm 0.27's LLVM declares the byte operands <64 x i8> (older LLVMs: <16 x i32>)
        quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), T.reinterpret(T.broadcast(quad, 16), dtype="int8x64"),
            B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


TensorIntrin.register(VPDPBUSD_16X4, _dot_desc(16, 4, "uint8", "int8"), _vpdpbusd_impl, override=True)
