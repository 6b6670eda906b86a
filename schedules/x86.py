"""Hand schedules for x86 (AVX2 / AVX-512) and, with other tile sizes, for other SIMD CPUs.

bconv2d, C > 64 or strided or NHWC (field notes section 2): a register tile of a row of output pixels x ``KI`` output
channels, accumulated in a ``local`` buffer (``cache_write``) and written back once per tile with
the epilogue fused into that copy-out (``reverse_compute_inline``), rows in parallel, padded input
rows computed per task, popcount vectorised across output channels (AVX2: ``vpshufb`` nibble LUT;
AVX512-VPOPCNTDQ: ``vpopcntq``).  ``decompose_reduction`` comes last.  The epilogue is vectorised
along k (see ``_copy_out``).

bconv2d with one word per pixel, unit w stride and NCHW output (the small-C ReActNet layers):
popcounts vectorised along ow instead, see ``_schedule_bconv2d_pixvec``.
"""
from __future__ import annotations

from tvm import s_tir

from . import generic, generic_quantized
from .compute.common import WORD
from .generic import (
    TILE_SCOPE,
    extent,
    has_block,
    largest_divisor,
    loops_under,
    pick_factor,
    vectorize_innermost,
)
from .x86_intrinsics import SIGN_BITS_64  # the packed sign bits of a dense: vmovmskps (AVX)

# KI = 8 u64 lanes = two ymm registers per pixel; a row of up to 14 pixels was the best tile on
# Zen 3 (a larger WI spills, a smaller one reloads the weights more often).
KI_X86 = 8
WI_MAX_X86 = 14
# Pixel-vectorised variant (C <= 64, unit w stride, NCHW): 16 pixels (8 if OW % 16) x 4 output
# channels; measured on an AVX-512 Xeon, 1 thread: 16x4 0.28 ms vs 8x8 0.37 ms (64->64 @56, 3x3).
PIX_VEC_X86 = 16
PIX_KI_X86 = 4
#: (pixels, output channels) of that tile where a CPU measured another one faster, by LLVM CPU
#: name.  Zen 4, 1 thread, 3x3 64->64 @56 (bench_kernels.py, 3 interleaved runs each): 16x4
#: 0.140-0.164 ms, 8x8 0.120-0.133 ms (77 % of the popcount ceiling), 2x16 0.122-0.139; 1x1
#: 64@56 and 32@112 within noise.
PIX_TILES = {"znver4": (8, 8)}
#: below this many row bands, a binary matmul's tiles are parallel tasks too
MIN_ROW_TASKS = 8
# A pixel's input words (rc) are unrolled below this count.  At 8+ words (C >= 512) the
# unrolled body of WI pixels x CW words spilled its accumulators (Zen 3, 1 thread, 3x3:
# 512@14 2.11 -> 1.64 ms, 1024@7 2.06 -> 1.59 ms, R18 512@7 0.58 -> 0.41 ms rolled); at
# 4 words unrolling stays faster (256@28 1.56 ms against 1.89 ms rolled).
UNROLL_WORDS_MAX = 8


def bconv2d_hints(target) -> dict[str, int]:
    """The ``bconv`` block's schedule hints for this target (``compute.bconv2d(hints=)``): the
    pixel-vectorised tile where :data:`PIX_TILES` names the CPU, else none (the defaults)."""
    tile = PIX_TILES.get(str(target.attrs.get("mcpu", "")))
    return {"bnn_pix_vec": tile[0], "bnn_pix_ki": tile[1]} if tile else {}


def _copy_out(sch: s_tir.Schedule, wb, at, nchw: bool, wf: int, kf: int) -> None:
    """Epilogue of a finished ``wf x kf`` tile.  ``wb`` loops under the tile loop ``at``:
    (ow_i, k_i), where unit-extent loops are dropped by reverse_compute_at.

    NCHW: the epilogue runs along ow, where the stores, the residual reads and the border table
    (``[classes, K, OW]``) are contiguous.  (Before the table, the per-tap border selects made it 5x the cost of
    the popcounts on 64->64 @56 along ow, so it ran along k and staged the tile in a local buffer
    for the stores: 0.166 ms against 0.127 ms with one-padding on 128->128 @28.)  NHWC: along k."""
    loops = loops_under(sch, wb, at)
    if wf > 1 and kf > 1:
        ow, k = loops[-2], loops[-1]
        if nchw:
            sch.reorder(k, ow)
            sch.vectorize(ow)
        else:
            sch.vectorize(k)
    elif wf > 1 or kf > 1:
        sch.vectorize(loops[-1])


def _pixel_vector_ok(sch: s_tir.Schedule, conv, nchw: bool) -> int:
    """Vector width along ow for the pixel-vectorised variant (0: not applicable)."""
    if not nchw:
        return 0
    ann = sch.get(conv).annotations
    if int(ann.get("bnn_cw", 0)) != 1 or int(ann.get("bnn_sw", 0)) != 1:
        return 0  # several words per pixel / strided w: the ow vector loads would be strided
    ow_ext = extent(sch, sch.get_loops(conv)[2])
    f = pick_factor(ow_ext, (int(ann.get("bnn_pix_vec", PIX_VEC_X86)), 8))
    return f if f >= 8 else 0


def _schedule_bconv2d_pixvec(sch: s_tir.Schedule, conv, out, wf: int, ki: int) -> None:
    """One input word per pixel (C <= 64), unit stride along w, NCHW output: vectorise the
    popcounts along ow (a contiguous load of ``wf`` input words, the weight word broadcast) with
    ``kf`` output channels unrolled.  The accumulator tile is kept as [k][ow], so the epilogue
    and the NCHW stores are contiguous along ow: no transpose of the tile at all."""
    n, oh, ow, k, rh, rw, rc = sch.get_loops(conv)
    kf = pick_factor(extent(sch, k), (ki, 4, 2))
    ko, kin = sch.split(k, factors=[None, kf])
    wo, win = sch.split(ow, factors=[None, wf])
    # ko outside wo: a task walks each group of kf channel planes along the row, so the epilogue's
    # residual reads and the output writes stream plane by plane (wo outside ko touched all K
    # planes per pixel chunk; with a fused residual that cost ~2x on 32->32 @112, 1x1)
    sch.reorder(n, oh, ko, wo, rh, rw, rc, kin, win)
    wb = sch.cache_write(conv, 0, TILE_SCOPE)
    sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, b, d, c))
    sch.reverse_compute_at(wb, wo)
    sch.reverse_compute_inline(out)
    row = sch.fuse(n, oh)
    sch.parallel(row)
    if has_block(sch, "bpad"):
        sch.compute_at(sch.get_sblock("bpad"), row)
    sch.vectorize(win)
    sch.unroll(kin)
    loops = loops_under(sch, wb, wo)  # ([k_i], ow_i): wf >= 8, so ow_i is always there
    if kf > 1:
        sch.reorder(loops[-1], loops[-2])
    vectorize_innermost(sch, wb, wo)
    sch.decompose_reduction(conv, rh)
    generic.schedule_output_pack(sch, row)


def schedule_bconv2d(sch: s_tir.Schedule, ki: int = KI_X86, wi_max: int = WI_MAX_X86,
                     unroll_words_max: int | None = UNROLL_WORDS_MAX) -> None:
    conv = sch.get_sblock("bconv")
    out = sch.get_sblock("bconv_out")
    nchw = _is_nchw(sch, out)
    pv = _pixel_vector_ok(sch, conv, nchw)
    if pv:
        _schedule_bconv2d_pixvec(sch, conv, out, pv, int(sch.get(conv).annotations.get("bnn_pix_ki", PIX_KI_X86)))
        return
    n, oh, ow, k, rh, rw, rc = sch.get_loops(conv)
    kf = pick_factor(extent(sch, k), (ki, 4, 2))
    wf = largest_divisor(extent(sch, ow), wi_max)
    ko, kin = sch.split(k, factors=[None, kf])
    wo, win = sch.split(ow, factors=[None, wf])
    sch.reorder(n, oh, wo, ko, rh, rw, rc, win, kin)
    wb = sch.cache_write(conv, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, ko)
    sch.reverse_compute_inline(out)  # epilogue fused into the copy-out of the finished tile
    row = sch.fuse(n, oh)
    sch.parallel(row)
    if has_block(sch, "bpad"):
        # Each task pads only the input rows its output row reads: no shared workspace, no race.
        sch.compute_at(sch.get_sblock("bpad"), row)
        # (all its loops are unit for W = CW = KH = 1: then nothing under the row to vectorise)
        vectorize_innermost(sch, sch.get_sblock("bpad"), row, (2, 4, 8, 16))
    sch.vectorize(kin)
    sch.unroll(win)
    if unroll_words_max is None or extent(sch, rc) < unroll_words_max:
        sch.unroll(rc)
    _copy_out(sch, wb, ko, nchw, wf, kf)
    sch.decompose_reduction(conv, rh)
    generic.schedule_output_pack(sch, row)


def _is_nchw(sch: s_tir.Schedule, out_block) -> bool:
    # compute.bconv2d records the output layout on the copy-out block (shapes alone are ambiguous).
    return str(sch.get(out_block).annotations.get("bnn_out_layout", "NCHW")) == "NCHW"


def _schedule_mm(sch: s_tir.Schedule, red: str, out: str, nvec: int, mi_max: int,
                 nf: int | None = None, pack_intrin: str | None = None) -> None:
    """Register tile ``MI`` rows x ``NI`` lanes for ``[*batch, M, N]`` popcount reductions.

    A ``<red>_pack`` block (compute.bdense's packed sign bits) runs under each 64 outputs of a
    row band, right after their tiles: the margin between them is a task's ``[MI, 64]`` int32
    buffer (on the stack: stack_scratch), its bits one ``pack_intrin`` per word (None: LLVM's
    vectorisation of the sum of selects).  Zen 4, 1 thread, ``vmovmskps`` words: 196 x 384 ->
    1152 with its bits 89-91 us, its float margin alone 88 + a pack kernel 15; 256 x 256 ->
    512 38-39 against 38 + 10.

    N without an even divisor (odd N: 3, 9, 197, 1001): no lane tile; a task then takes ``MI``
    whole rows of N (the n loop innermost, left to LLVM), as the generic schedule does.  1 x 1
    tiles made one parallel task per output: 60x slower (dense 197x384 -> 197: 1.2 ms -> 70 us)."""
    blk = sch.get_sblock(red)
    *spatial, r = sch.get_loops(blk)
    batch, m, n = spatial[:-2], spatial[-2], spatial[-1]
    nf = nf or pick_factor(extent(sch, n), (nvec, 4, 2))
    mf = largest_divisor(extent(sch, m), mi_max)
    mo, mi = sch.split(m, factors=[None, mf])
    if nf == 1:
        sch.reorder(*batch, mo, r, mi, n)
        wb = sch.cache_write(blk, 0, TILE_SCOPE)
        sch.reverse_compute_at(wb, mo)
        sch.reverse_compute_inline(sch.get_sblock(out))
        task = [*batch, mo]
        fused = sch.fuse(*task) if len(task) > 1 else mo
        sch.parallel(fused)
        sch.unroll(mi)
        sch.decompose_reduction(blk, r)
        return
    no, ni = sch.split(n, factors=[None, nf])
    pack = sch.get_sblock(f"{red}_pack") if has_block(sch, f"{red}_pack") else None
    if pack is not None:  # the tiles of one output word, then its bits (compute.bdense's pack)
        word, no = sch.split(no, factors=[None, WORD // nf])
        sch.reorder(*batch, mo, word, no, r, mi, ni)
    else:
        sch.reorder(*batch, mo, no, r, mi, ni)
    wb = sch.cache_write(blk, 0, TILE_SCOPE)
    sch.reverse_compute_at(wb, no)
    sch.reverse_compute_inline(sch.get_sblock(out))
    tile = no  # the copy-out's anchor, unless the row bands below split it
    if pack is not None:
        sch.reverse_compute_at(pack, word)
        no = word  # a row band's tasks split along whole words
    rows = sch.fuse(*batch, mo) if batch else mo
    # A task is a band of MI rows, its tiles walked in order: one task per tile cost ~90
    # cycles each (Zen 3, 1 thread: attention Q.K^T 6x196x196, K=64, 0.29 -> 0.094 ms; dense
    # 196x384 -> 1152 0.43 -> 0.31 ms; 1x512 -> 1000 4.9 -> 2.1 us).  With too few row bands
    # to share out (M = 1: a classifier, a pooled token) the tiles split into a few bands too.
    bands = MIN_ROW_TASKS // extent(sch, rows)
    if bands > 1 and largest_divisor(extent(sch, no), bands) > 1:
        nb, no = sch.split(no, factors=[largest_divisor(extent(sch, no), bands), None])
        rows = sch.fuse(rows, nb)
        tile = tile if pack is not None else no
    sch.parallel(rows)
    sch.vectorize(ni)
    sch.unroll(mi)
    # The copy-out's loops under the tile loop: (mi, ni) less the unit ones.  Never
    # ``get_loops(wb)[-1]``: with MF = NF = 1 that was a parallel task loop, and vectorising
    # it miscompiled the tile's local accumulator (every output took the last column's value;
    # generic.loops_under).
    vectorize_innermost(sch, wb, tile)
    sch.decompose_reduction(blk, r)
    if pack is not None:  # after the parallel loop: a decomposed reduction blocks its check
        b = sch.get_loops(pack)[-1]
        sch.decompose_reduction(pack, b)
        if pack_intrin is not None:
            sch.tensorize(b, pack_intrin)


def schedule_bdense(sch: s_tir.Schedule, nvec: int = KI_X86, mi_max: int = 4,
                    pack_intrin: str | None = SIGN_BITS_64) -> None:
    # Leading token dims stay separate batch loops: a row tile that crossed a boundary of a
    # fused [B, L] axis would make the tile's region non-rectangular (over-approximated).
    # 4 rows: Zen 3, 196 tokens, 384 -> 1152 / 1152 -> 384 / 384 -> 384: 86 / 93 / 86 % of the
    # popcount ceiling against 78 / 86 / 79 % for 7 (a row band's weights, 8 lanes, stay hot)
    reads = sch.get(sch.get_sblock("bdense")).reads
    if any(str(r.source.dtype) == "uint32" for r in reads):
        # half words (registry.dense_weight_bits): 16 int32 lanes, 2 rows (Zen 4: 4 rows
        # measured 80 / 54 % of the ceiling for 256 -> 512 / 384 -> 1152, 2 rows 80 / 86 %)
        nvec, mi_max = 16, 2
    _schedule_mm(sch, "bdense", "bdense_out", nvec, mi_max, pack_intrin=pack_intrin)


def schedule_bbatch_matmul(sch: s_tir.Schedule, nvec: int = KI_X86, mi_max: int = 8) -> None:
    *_, _m, n, r = sch.get_loops(sch.get_sblock("bbmm"))
    wide = [f for f in range(4, 4 * nvec + 1, 4) if extent(sch, n) % f == 0]
    if extent(sch, r) == 1 and extent(sch, n) % nvec and wide:
        # One word per dot product (attention heads of <= 64): the epilogue (count -> float,
        # store) costs more than the popcount, and 4-lane tiles ran it on half registers.  A
        # wide row of lanes packs the int64 counts into full int32 vectors (Zen 3, 1 thread,
        # Q.K^T 6x196x196, k64: 7 rows x 4 lanes 0.085 ms, 2 rows x 28 lanes 0.074 ms).
        _schedule_mm(sch, "bbmm", "bbmm_out", nvec, 2, nf=wide[-1])
        return
    _schedule_mm(sch, "bbmm", "bbmm_out", nvec, mi_max)


schedule_bitpack = generic.schedule_bitpack
schedule_bitpack_last = generic.schedule_bitpack_last
schedule_maxpool2d = generic.schedule_maxpool2d
schedule_avgpool2d = generic.schedule_avgpool2d
schedule_prelu_stats = generic.schedule_prelu_stats
schedule_token_threshold = generic.schedule_token_threshold


def schedule_fconv2d(sch: s_tir.Schedule) -> None:
    """The register tile by vector width.  AVX-512 (16 lanes, 32 zmm): 8 pixels x 2 channel
    blocks.  AVX2 (8 lanes, 16 ymm) spills that (16 accumulators + 2 weights + 1 broadcast),
    so it takes 4 pixels x 2 blocks, or up to 12 pixels x 1 block when the row width has no
    divisor of 4 (7x7 maps).  Zen 3, 1 thread, 8 px x 2 blocks -> this rule: stem 7x7 s2
    3->64 @224 5.39 -> 2.70 ms; 1x1 64->128 @28 0.294 -> 0.172 ms; 256->512 @7 0.284 ->
    0.267 ms (/tmp probe of (wi, kb) pairs; 2 px x 4 blocks was within 5%)."""
    conv = sch.get_sblock("fconv")
    loops = sch.get_loops(conv)
    lanes = extent(sch, loops[4])  # ob: the weight block is one vector
    if lanes >= 16:
        generic.schedule_fconv2d(sch, wi_max=8, kb_max=2)
    elif largest_divisor(extent(sch, loops[3]), 4) == 4:
        generic.schedule_fconv2d(sch, wi_max=4, kb_max=2)
    else:
        generic.schedule_fconv2d(sch, wi_max=12, kb_max=1)


schedule_quantize_pairs = generic_quantized.schedule_quantize_pairs
schedule_quantize_hwc = generic_quantized.schedule_quantize_hwc
schedule_quantize_width = generic_quantized.schedule_quantize_width
schedule_quantize_rows = generic_quantized.schedule_quantize_rows
schedule_quantize_columns = generic_quantized.schedule_quantize_columns


def schedule_qbatch_matmul(sch: s_tir.Schedule) -> None:
    """Attention's int8 product on AVX-512 VNNI (the registry sends targets without it to the
    generic schedule): one zmm ``vpdpbusd`` per (row, 16 columns, 4 keys): the row's 4
    probability bytes broadcast, times 16 columns of 4 value bytes; up to 14 rows x 1 block of
    accumulators (one value load per 14 products).  Zen 4, 1 thread, [6,196,196] x 64: 4 rows x
    4 blocks 0.082 ms, 7 x 2 0.071, 14 x 1 0.069; [4,256,256] (8 x 1) 0.090 -> 0.078; [4,64,64]
    0.0088 -> 0.0061."""
    from .x86_intrinsics import VPDPBUSD_16X4

    lanes = extent(sch, sch.get_loops(sch.get_sblock("qbmm"))[3])
    if lanes == 16:
        generic_quantized.schedule_qbatch_matmul(sch, mi_max=14, nb_max=1, intrin=VPDPBUSD_16X4)
    else:
        generic_quantized.schedule_qbatch_matmul(sch)



def schedule_qconv2d(sch: s_tir.Schedule) -> None:
    """One ``vpmaddwd`` per (pixel, 8 output channels, input-channel pair, tap): 16 int16 MACs
    where an FMA does 8 float ones.  Zen 3, 1 thread, CCT-14's tokenizer conv 64->384 7x7 s2
    @56: fp32 22.5 ms (42 G MAC/s) -> 13.5 ms (70 G MAC/s) as 4 px x 2 blocks; 4x3, 6x2, 7x1,
    8x1, 14x1 within 5 %, 7x2 (14 accumulators) spills: 19.7 ms.  AVX-512 targets block the
    output channels by 16 (the float kernels' width): each block runs as two 8-lane halves, the
    same ymm instruction, 8 px x 1 block (16 accumulators of AVX-512's 32 vector registers; not
    timed: no such CPU here).  Offset uint8 quads (VNNI CPUs, int8) take one zmm ``vpdpbusd``
    per (pixel, 16 output channels, 4 input channels, tap): 64 MACs, 8 px x 2 blocks.  Zen 4,
    1 thread: ResNet stem 7x7 s2 3->64 @224 as pairs 1.55 ms (76 G MAC/s), as quads 0.86-0.94
    ms (126-140 G: its 4th channel is padding); 1x1 256->512 @14 0.246 -> 0.135-0.152 ms (8x1
    and 16x1 within 5 %; 4x4, 7x2, 14x1 up to 40 % slower on the stem, /tmp probe)."""
    from .x86_intrinsics import PMADDWD_8X2, VPDPBUSD_16X4

    conv = sch.get_sblock("qconv")
    loops = sch.get_loops(conv)
    lanes, group = extent(sch, loops[4]), extent(sch, loops[-1])  # ob, j
    along_w = int(sch.get(conv).annotations.get("bnn_width_groups", 0))
    if group == 4:
        if lanes % 16:
            generic_quantized.schedule_qconv2d(sch)
        else:
            # width quads (the 3-channel 7x7 stem, Zen 4, 1 thread): 4 px x 2 blocks 0.600 ms,
            # 7x2 0.598, 8x2 0.660, 14x1 0.603, 16x1 0.665, 8x4 1.16; as channel quads 8x2 0.786
            generic_quantized.schedule_qconv2d(sch, wi_max=4 if along_w else 8, kb_max=2, intrin=VPDPBUSD_16X4,
                                               intrin_lanes=16)
    elif lanes % 8:
        generic_quantized.schedule_qconv2d(sch)  # no 8-lane halves: plain int32 vectors
    elif lanes == 8:
        generic_quantized.schedule_qconv2d(sch, wi_max=4, kb_max=2, intrin=PMADDWD_8X2)
    else:
        generic_quantized.schedule_qconv2d(sch, wi_max=8, kb_max=1, intrin=PMADDWD_8X2, intrin_lanes=8)
