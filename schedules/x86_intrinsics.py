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

``bnn_avx512_lookup16_<T>_<U>`` (:func:`table_lookup`): ``E[i] += TAB[IDX[i]]`` for 16 float32
outputs from the first ``U`` of a table of ``T`` (a multiple of 32) floats, one ``vpermi2ps`` per
32 entries (AVX-512 F): the softmax over binary scores (``compute.softmax_counts``), whose exponentials
are a table indexed by popcounts.  Written as a one-hot sum over the table (the block's reads
are then affine, which ``compute_at`` and ``tensorize`` need); an index outside the table
reads a wrapped entry instead of none, which counts never are.

``bnn_sign_bits_64`` (:data:`SIGN_BITS_64`): ``W[0] += sum_b (X[b] >= 0 ? 1 << b : 0)`` for 64
int32 ``X``, the packed word of 64 signs, as 8 ``vmovmskps`` (AVX) of the sign bits, inverted:
a binary dense writing the bits of a sign decided on its sums (``compute.bdense(pack=True)``).
LLVM's own vectorisation of that sum of selects took longer than the dense's tiles.
"""
from __future__ import annotations

from tvm import tirx
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


def _lookup_desc(size: int):
    """``E[i] += sum_j (IDX[i] == j ? TAB[j] : 0)``: the table lookup as
    ``compute.softmax_counts`` writes it, for 16 outputs."""

    @T.prim_func(s_tir=True)
    def desc(IDX: T.Buffer((16,), "uint8", offset_factor=1),
             TAB: T.Buffer((size,), "float32", offset_factor=1),
             E: T.Buffer((16,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(E[0:16], IDX[0:16], TAB[0:size])
            T.writes(E[0:16])
            for i, j in T.grid(16, size):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    E[vi] = E[vi] + T.Select(T.Cast("int32", IDX[vi]) == vj, TAB[vj], T.float32(0))

    return desc


def _lookup(tab, d, size: int, used: int):
    """16 entries ``tab[d]`` of the table's first ``used``: one ``vpermi2ps`` per 32 entries
    (index bits 0..4), one ``vpermps`` for a last group of at most 16, a broadcast for a last
    single entry (attention's k = 64 has 65 scores), each group chosen by ``d >= its start``."""
    out = None
    for start in range(0, used, 32):
        left = used - start
        if left == 1:
            part = T.broadcast(tab[start], 16)
        elif left <= 16:
            part = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.permvar.sf.512"),
                                           tab.vload([start], "float32x16"), d, dtype="float32x16")
        else:
            part = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpermi2var.ps.512"),
                                           tab.vload([start], "float32x16"), d,
                                           tab.vload([start + 16], "float32x16"), dtype="float32x16")
        out = part if out is None else tirx.Select(d >= T.broadcast(T.int32(start), 16), part, out)
    return out


def _lookup_impl(size: int, used: int):
    @T.prim_func(s_tir=True)
    def impl(IDX: T.Buffer((16,), "uint8", offset_factor=1),
             TAB: T.Buffer((size,), "float32", offset_factor=1),
             E: T.Buffer((16,), "float32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(E[0:16], IDX[0:16], TAB[0:size])
            T.writes(E[0:16])
            d = T.Cast("int32x16", IDX.vload([0], "uint8x16"))
            E[T.ramp(T.int32(0), 1, 16)] = E.vload([0], "float32x16") + _lookup(TAB, d, size, used)

    return impl


def table_lookup(size: int, used: int | None = None) -> str:
    """The name of the 16-output lookup from a ``size``-entry table (a multiple of 32) whose
    indices are below ``used`` (default ``size``), registered on first use.  Indices at or past
    ``used`` read some entry of the table, never memory outside it."""
    used = size if used is None else used
    if size <= 0 or size % 32 or not 0 < used <= size:
        raise ValueError(f"table_lookup: indices below {used} into a table of {size} entries "
                         f"(a multiple of 32)")
    name = f"bnn_avx512_lookup16_{size}_{used}"
    if name not in _LOOKUPS:
        TensorIntrin.register(name, _lookup_desc(size), _lookup_impl(size, used), override=True)
        _LOOKUPS.add(name)
    return name


_LOOKUPS: set[str] = set()


SIGN_BITS_64 = "bnn_sign_bits_64"


@T.prim_func(s_tir=True)
def _sign_bits_desc(X: T.Buffer((64,), "int32", offset_factor=1),
                    W: T.Buffer((1,), "uint64", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(W[0:1], X[0:64])
        T.writes(W[0:1])
        for b in T.serial(0, 64):
            with T.sblock("update"):
                vb = T.axis.remap("R", [b])
                W[0] = W[0] + T.Select(X[vb] >= T.int32(0), T.uint64(1) << T.Cast("uint64", vb), T.uint64(0))


def _sign_byte(X, start: int):
    """Bits ``X[start + i] >= 0`` of 8 int32 lanes as the low byte of a uint64: one
    ``vmovmskps`` (AVX) of their sign bits, inverted."""
    signs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx.movmsk.ps.256"),
                                    T.reinterpret(X.vload([start], "int32x8"), dtype="float32x8"),
                                    dtype="int32")
    return T.Cast("uint64", T.bitwise_and(T.bitwise_not(signs), T.int32(255))) << T.uint64(start)


@T.prim_func(s_tir=True)
def _sign_bits_impl(X: T.Buffer((64,), "int32", offset_factor=1),
                    W: T.Buffer((1,), "uint64", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(W[0:1], X[0:64])
        T.writes(W[0:1])
        W[0] = W[0] + (_sign_byte(X, 0) | _sign_byte(X, 8) | _sign_byte(X, 16) | _sign_byte(X, 24)
                       | _sign_byte(X, 32) | _sign_byte(X, 40) | _sign_byte(X, 48) | _sign_byte(X, 56))


TensorIntrin.register(SIGN_BITS_64, _sign_bits_desc, _sign_bits_impl, override=True)
