"""CUDA schedules: one thread per output element, register (``local``) accumulator.

The computes are built with ``acc_dtype="int32"`` for CUDA (``__popcll`` returns int).  Threads
run along the innermost output axis (the output channel for bconv2d / the N axis for matmuls) so
neighbouring threads read neighbouring weight words (coalesced).  Build-checked only (no GPU here).
"""
from __future__ import annotations

from tvm import s_tir

from .generic import has_block, prelu_stats_blocks

THREADS = 128


def _bind_flat(sch: s_tir.Schedule, loops):
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, factors=[None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


def _reduction(sch: s_tir.Schedule, red: str, out: str, n_reduce: int) -> None:
    blk = sch.get_sblock(red)
    loops = sch.get_loops(blk)
    spatial, reduce = loops[:-n_reduce], loops[-n_reduce:]
    tx = _bind_flat(sch, spatial)
    wb = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(wb, tx)
    sch.reverse_compute_inline(sch.get_sblock(out))
    sch.decompose_reduction(blk, reduce[0])


def schedule_bconv2d(sch: s_tir.Schedule) -> None:
    if has_block(sch, "bpad"):
        sch.compute_inline(sch.get_sblock("bpad"))  # the guarded load replaces the padded copy
    _reduction(sch, "bconv", "bconv_out", 3)
    if has_block(sch, "bconv_pack"):
        _bitpack(sch, "bconv_pack")


def schedule_bdense(sch: s_tir.Schedule) -> None:
    _reduction(sch, "bdense", "bdense_out", 1)


def schedule_bbatch_matmul(sch: s_tir.Schedule) -> None:
    _reduction(sch, "bbmm", "bbmm_out", 1)


def _bitpack(sch: s_tir.Schedule, name: str) -> None:
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    tx = _bind_flat(sch, loops[:-1])
    wb = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(wb, tx)
    sch.decompose_reduction(blk, loops[-1])


def schedule_bitpack(sch: s_tir.Schedule) -> None:
    _bitpack(sch, "bitpack")


def schedule_bitpack_last(sch: s_tir.Schedule) -> None:
    _bitpack(sch, "bitpack_last")


def schedule_fconv2d(sch: s_tir.Schedule) -> None:
    sch.compute_inline(sch.get_sblock("fpad"))
    blk = sch.get_sblock("fconv")
    loops = sch.get_loops(blk)
    tx = _bind_flat(sch, loops[:-3])
    wb = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(wb, tx)
    sch.decompose_reduction(blk, loops[-3])
    _bind_flat(sch, sch.get_loops(sch.get_sblock("fconv_out")))


def schedule_maxpool2d(sch: s_tir.Schedule) -> None:
    sch.compute_inline(sch.get_sblock("pool_rows"))
    if has_block(sch, "pool_out"):  # NCHWc input: one thread per NCHW output element
        sch.compute_inline(sch.get_sblock("pool"))
        _bind_flat(sch, sch.get_loops(sch.get_sblock("pool_out")))
        return
    _bind_flat(sch, sch.get_loops(sch.get_sblock("pool")))


def schedule_avgpool2d(sch: s_tir.Schedule) -> None:
    _bind_flat(sch, sch.get_loops(sch.get_sblock("pool_avg")))


def schedule_prelu_stats(sch: s_tir.Schedule) -> None:
    # flat element-wise pass for y, then one thread per partial sum / row statistic (the rows
    # are short: L / F terms, then F)
    _bind_flat(sch, sch.get_loops(sch.get_sblock("prelu")))
    for part, total, mean in prelu_stats_blocks(sch):
        for blk in (part, total):
            *spatial, red = sch.get_loops(blk)
            _bind_flat(sch, spatial)
            sch.decompose_reduction(blk, red)
        _bind_flat(sch, sch.get_loops(mean))
