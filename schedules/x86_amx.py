"""Intel AMX int8 convolution (``compile --conv-precision int8`` on CPUs with AMX-INT8).

The quantized conv (:mod:`.quantize`: per-sample int8 activations, per-channel int8 weights, an
exact int32 sum) as an implicit GEMM on AMX tiles: ``TDPBSSD`` multiplies a 16 x 64 int8 tile of
activations with a 64 x 16 int8 tile of weights into 16 x 16 int32 sums, 16384 MACs per
instruction (1024 a cycle: 64x the FP32 FMA rate of an AVX-512 core).

Why hand-written TIR and not a TE compute plus schedule: AMX tiles are eight named registers
(``tmm0-7``) that TVM's scheduler cannot allocate; a tensor intrinsic that loads and stores its
accumulator around every 64-deep step would move 3x the data the ``TDPBSSD`` consumes.  So the
compute (:func:`amx_reference` in numpy, and the int32 sums checked against
``reference.qconv2d_ref`` in ``tests/schedules/test_amx.py``) and this kernel are kept apart as
in the rest of the package, the kernel owning its register blocking.

Layout (:class:`AmxGeometry`): activations int8 ``[N, HQ, WP, C]`` (NHWC, spatially padded;
``compute.quantize_hwc``), so for a fixed kernel row ``kh`` the ``(kw, c)`` products of one
output pixel are one contiguous run of ``span * C`` bytes (``span = (KW - 1) * dw + 1``), read in
64-byte windows; consecutive output pixels of a row sit ``sw * C`` bytes apart, which is
``TILELOADD``'s row stride.  A tile is 16 consecutive pixels of one output row (the last tile of
a row also reads pixels past it: garbage rows, never stored; extra zero rows ``HQ - HP`` keep those
reads inside the buffer).  Window bytes past the run, or between dilated taps, meet zero weights.
Weights int8 ``[NT, KC, 16, 16, 4]`` (``quantize.amx_blocked``): for 16 output channels (``nt``)
and one window (``kc = kh * JC + j``), ``TDPBSSD``'s B tile, 4 consecutive window bytes per
32-bit element.

Register blocking: 2 pixel tiles x 2 channel tiles in ``tmm0-3``, the two A tiles in ``tmm4-5``,
the two B tiles in ``tmm6-7`` (4 loads per 4 ``TDPBSSD``).  Odd tile counts repeat the last tile
(the same values written twice).  Each parallel chunk configures the tiles itself (tile state is
per thread), and each call asks Linux for the AMX state first (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``, idempotent; a refusal fails the call with a message instead of SIGILL).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE = 16  # rows of a tile (pixels) and int32 columns of an accumulator (channels)
WINDOW = 64  # bytes of a tile row: the reduction depth of one TDPBSSD
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 0x1023, 18
FEATURES = ("amx-tile", "amx-int8")


def available(target) -> bool:
    """Does ``target`` (a TVM llvm target) have AMX-INT8?"""
    from .target_identity import has_x86_features

    return has_x86_features(target, FEATURES)


@dataclass(frozen=True)
class AmxGeometry:
    """Shapes of one AMX conv: data ``[N, C, H, W]``, weight ``[K, C, KH, KW]``, stride, padding
    ``(top, left, bottom, right)``, dilation."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]

    @property
    def hp(self) -> int:
        return self.h + self.padding[0] + self.padding[2]

    @property
    def wp(self) -> int:
        return self.w + self.padding[1] + self.padding[3]

    @property
    def oh(self) -> int:
        return (self.hp - (self.kh - 1) * self.dilation[0] - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.wp - (self.kw - 1) * self.dilation[1] - 1) // self.stride[1] + 1

    @property
    def span(self) -> int:
        """Pixels of one kernel row, dilation gaps included."""
        return (self.kw - 1) * self.dilation[1] + 1

    @property
    def jc(self) -> int:
        """64-byte windows per kernel row."""
        return -(-self.span * self.c // WINDOW)

    @property
    def kc(self) -> int:
        return self.kh * self.jc

    @property
    def nt(self) -> int:
        return -(-self.k // TILE)

    @property
    def owt(self) -> int:
        return -(-self.ow // TILE)

    @property
    def hq(self) -> int:
        """Rows of the quantized data: the padded rows plus what the last tile's reads need."""
        sh, sw = self.stride
        last = (((self.oh - 1) * sh + (self.kh - 1) * self.dilation[0]) * self.wp
                + (self.owt * TILE - 1) * sw) * self.c + self.jc * WINDOW  # one past the last byte
        return max(self.hp, -(-last // (self.wp * self.c)))

    def tag(self) -> str:
        s, p, d = self.stride, self.padding, self.dilation
        return (f"{self.n}x{self.c}x{self.h}x{self.w}_k{self.k}x{self.kh}x{self.kw}_s{s[0]}x{s[1]}"
                f"_p{'x'.join(map(str, p))}_d{d[0]}x{d[1]}")


def window_taps(g: AmxGeometry) -> np.ndarray:
    """``[JC * 64, 2]``: the ``(kw, c)`` each byte of a kernel row's windows multiplies, ``-1``
    where it meets a zero weight (past the run, or between dilated taps)."""
    byte = np.arange(g.jc * WINDOW)
    pixel, c = byte // g.c, byte % g.c
    kw, on_tap = pixel // g.dilation[1], pixel % g.dilation[1] == 0
    valid = on_tap & (kw < g.kw)
    return np.stack([np.where(valid, kw, -1), np.where(valid, c, -1)], axis=1)


def block_weight(ints: np.ndarray, g: AmxGeometry) -> np.ndarray:
    """int OIHW weights -> int8 ``[NT, KC, 16, 16, 4]``: channel ``nt * 16 + n``, window byte
    ``4 * k4 + t`` of window ``kc`` at ``[nt, kc, k4, n, t]`` (TDPBSSD's B tile), zero where
    :func:`window_taps` says so and past K."""
    ints = np.asarray(ints)
    if ints.shape != (g.k, g.c, g.kh, g.kw):
        raise ValueError(f"qconv2d_amx: weight {ints.shape} does not match {g.tag()}")
    if np.abs(ints).max(initial=0) > 127:
        raise ValueError("qconv2d_amx: weights must fit int8")
    taps = window_taps(g)
    valid = taps[:, 0] >= 0
    rows = np.zeros((g.nt * TILE, g.kh, g.jc * WINDOW), np.int8)
    rows[:g.k, :, valid] = ints[:, taps[valid, 1], :, taps[valid, 0]].transpose(1, 2, 0)
    blocked = rows.reshape(g.nt, TILE, g.kh, g.jc, TILE, 4).transpose(0, 2, 3, 4, 1, 5)
    return np.ascontiguousarray(blocked.reshape(g.nt, g.kc, TILE, TILE, 4))


def amx_reference(q: np.ndarray, w_blocked: np.ndarray, g: AmxGeometry) -> np.ndarray:
    """int64 ``[N, K, OH, OW]``: the sums the kernel computes, from its own operand layouts
    (data ``[N, HQ, WP, C]`` int8, weights ``[NT, KC, 16, 16, 4]``), window by window: checks
    the layouts as well as the arithmetic."""
    sh, sw = g.stride
    flat = np.asarray(q, np.int64).reshape(g.n, -1)
    wb = np.asarray(w_blocked, np.int64).reshape(g.nt, g.kh, g.jc, TILE, TILE, 4)
    # B[k4, n, t] -> [kh, j*64 + 4*k4 + t, channel]
    wmat = wb.transpose(1, 2, 3, 5, 0, 4).reshape(g.kh, g.jc * WINDOW, g.nt * TILE)[..., :g.k]
    out = np.zeros((g.n, g.k, g.oh, g.ow), np.int64)
    oh, ow = np.meshgrid(np.arange(g.oh), np.arange(g.ow), indexing="ij")
    for kh in range(g.kh):
        start = ((oh * sh + kh * g.dilation[0]) * g.wp + ow * sw) * g.c  # [OH, OW] byte offsets
        idx = start[..., None] + np.arange(g.jc * WINDOW)
        a = flat[:, idx]  # [N, OH, OW, JC*64]
        out += np.einsum("nhwb,bk->nkhw", a, wmat[kh])
    return out


def build(g: AmxGeometry, *, out_layout: str = "NCHW", accumulate_only: bool = False,
          relu: bool = False, name: str = "main"):
    """The kernel's PrimFunc for geometry ``g``.

    Params: ``(q int8[N, HQ, WP, C], weight int8[NT, KC, 16, 16, 4], dequant float32[K],
    amax float32[N], bias float32[K], out)``; out is ``float32[N, K, OH, OW]``, ``float32[N, NT,
    OH, OW, 16]`` for ``out_layout="NCHWc"`` (K a multiple of 16), or the int32 sums
    ``int32[N, K, OH, OW]`` with ``accumulate_only`` (the exactness tests):
    ``out = float(sum) * (amax[n] * dequant[k]) + bias[k]``, then ``max(out, 0)`` with ``relu``.
    """
    from tvm.script import tirx as T

    if out_layout not in ("NCHW", "NCHWc"):
        raise ValueError(f"qconv2d_amx: out_layout must be 'NCHW' or 'NCHWc', got {out_layout!r}")
    if out_layout == "NCHWc" and g.k % TILE:
        raise ValueError(f"qconv2d_amx: NCHWc output needs K ({g.k}) in blocks of {TILE}")
    N, C, HQ, WP, K = g.n, g.c, g.hq, g.wp, g.k
    OH, OW, OWT, NT, KC, JC = g.oh, g.ow, g.owt, g.nt, g.kc, g.jc
    SH, SW, DH = g.stride[0], g.stride[1], g.dilation[0]
    TM = OH * OWT  # pixel tiles of one sample
    MBLK, NBLK = -(-TM // 2), -(-NT // 2)
    CHUNKS = min(MBLK, 16)  # parallel chunks; each loads the tile config once
    PER = -(-MBLK // CHUNKS)
    ROW = SW * C  # bytes between the rows (pixels) of an A tile
    SAMPLE = HQ * WP * C
    blocked = out_layout == "NCHWc"
    out_shape = (N, NT, OH, OW, TILE) if blocked else (N, K, OH, OW)
    out_dtype = "int32" if accumulate_only else "float32"
    ACC = accumulate_only

    def post(v):  # evaluated while the script is parsed: a fused Relu, or nothing
        return T.max(v, T.float32(0)) if relu else v

    @T.prim_func
    def kernel(q: T.Buffer((N, HQ, WP, C), "int8"), weight: T.Buffer((NT, KC, TILE, TILE, 4), "int8"),
               dequant: T.Buffer((K,), "float32"), amax: T.Buffer((N,), "float32"),
               bias: T.Buffer((K,), "float32"), out: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        qf = T.decl_buffer((N * SAMPLE,), "int8", data=q.data)
        perm = T.call_extern("int32", "arch_prctl", ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
        assert perm == 0, "AMX: Linux refused the tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
        for n in range(N):
            for chunk in T.parallel(CHUNKS):
                cfg = T.alloc_buffer((64,), "uint8", scope="local")
                acc = T.alloc_buffer((4, TILE, TILE), "int32")
                for i in range(64):
                    cfg[i] = T.uint8(0)
                cfg[0] = T.uint8(1)  # palette 1; every tile 16 rows x 64 bytes
                for t in range(8):
                    cfg[16 + 2 * t] = T.uint8(WINDOW)
                    cfg[48 + t] = T.uint8(TILE)
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
                for nb, mi in T.grid(NBLK, PER):
                    mb = chunk * PER + mi
                    if mb < MBLK:
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(0)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(1)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(2)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(3)))
                        t0 = mb * 2
                        t1 = T.min(mb * 2 + 1, TM - 1)
                        n0 = nb * 2
                        n1 = T.min(nb * 2 + 1, NT - 1)
                        for kc in range(KC):
                            kh = kc // JC
                            j = kc % JC
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.x86.tileloadd64", T.int8(4), T.address_of(qf[
                                    n * SAMPLE + (((t0 // OWT) * SH + kh * DH) * WP + (t0 % OWT) * TILE * SW) * C
                                    + j * WINDOW]), T.int64(ROW)))
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.x86.tileloadd64", T.int8(5), T.address_of(qf[
                                    n * SAMPLE + (((t1 // OWT) * SH + kh * DH) * WP + (t1 % OWT) * TILE * SW) * C
                                    + j * WINDOW]), T.int64(ROW)))
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.x86.tileloadd64", T.int8(6), T.address_of(weight[n0, kc, 0, 0, 0]),
                                T.int64(WINDOW)))
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.x86.tileloadd64", T.int8(7), T.address_of(weight[n1, kc, 0, 0, 0]),
                                T.int64(WINDOW)))
                            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbssd", T.int8(0), T.int8(4), T.int8(6)))
                            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbssd", T.int8(1), T.int8(4), T.int8(7)))
                            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbssd", T.int8(2), T.int8(5), T.int8(6)))
                            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbssd", T.int8(3), T.int8(5), T.int8(7)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(0),
                                                      T.address_of(acc[0, 0, 0]), T.int64(TILE * 4)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(1),
                                                      T.address_of(acc[1, 0, 0]), T.int64(TILE * 4)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(2),
                                                      T.address_of(acc[2, 0, 0]), T.int64(TILE * 4)))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(3),
                                                      T.address_of(acc[3, 0, 0]), T.int64(TILE * 4)))
                        for a in range(4):
                            tt = T.if_then_else(a < 2, t0, t1)
                            nt = T.if_then_else(a % 2 == 0, n0, n1)
                            oh = tt // OWT
                            ow0 = (tt % OWT) * TILE
                            scale = amax[n]
                            if blocked:
                                for r in range(TILE):
                                    if ow0 + r < OW:
                                        for c in T.vectorized(TILE):
                                            if ACC:
                                                out[n, nt, oh, ow0 + r, c] = acc[a, r, c]
                                            else:
                                                out[n, nt, oh, ow0 + r, c] = post(T.Cast("float32", acc[a, r, c])
                                                    * (scale * dequant[nt * TILE + c]) + bias[nt * TILE + c])
                            else:
                                for c in range(TILE):
                                    if nt * TILE + c < K:
                                        if ow0 + TILE <= OW:
                                            for r in T.vectorized(TILE):
                                                if ACC:
                                                    out[n, nt * TILE + c, oh, ow0 + r] = acc[a, r, c]
                                                else:
                                                    out[n, nt * TILE + c, oh, ow0 + r] = post(T.Cast("float32", acc[a, r, c])  # noqa: E501
                                                        * (scale * dequant[nt * TILE + c]) + bias[nt * TILE + c])
                                        else:
                                            for r in range(TILE):
                                                if ow0 + r < OW:
                                                    if ACC:
                                                        out[n, nt * TILE + c, oh, ow0 + r] = acc[a, r, c]
                                                    else:
                                                        out[n, nt * TILE + c, oh, ow0 + r] = post(T.Cast("float32", acc[a, r, c])  # noqa: E501
                                                            * (scale * dequant[nt * TILE + c])
                                                            + bias[nt * TILE + c])
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))

    return kernel
