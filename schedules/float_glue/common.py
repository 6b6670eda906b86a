"""Tile helpers the float-glue rules share: vector widths from the target, row vector
sizes, parallel and vectorized loops."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent
from tvm.target import Target


def vector_lanes(target: Target, bits: int = 32) -> int:
    """Elements per vector tile row: one AVX-512 / NEON register, but two AVX2 registers (the
    16-float tile gives two independent FMA chains per broadcast: Zen 3, attention's
    6x196x196 @ 196x64, 4 rows x 8 floats 0.60 ms, x 16 floats 0.33 ms)."""
    from ..target_identity import vector_bits

    width = vector_bits(target)
    return max((512 if width == 256 else width) // bits, 4)


def is_cpu(target: Target) -> bool:
    return target.kind.name == "llvm"


def vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = get_extent(sch, inner)
    if not isinstance(extent, int):
        return
    if extent > lanes and extent % lanes == 0:
        _, vec = sch.split(inner, factors=[None, lanes])
        sch.vectorize(vec)
    elif 2 <= extent <= lanes * 2:
        sch.vectorize(inner)


def parallel_outer(sch: s_tir.Schedule, loops, min_tasks: int = 2):
    """Fuse leading loops until there are enough tasks to spread over the cores; parallelize."""
    if not loops:
        return None
    n = 1
    total = 1
    for loop in loops:
        ext = get_extent(sch, loop)
        if not isinstance(ext, int):
            break
        total *= ext
        if total >= min_tasks * 8:
            break
        n += 1
    n = max(1, min(n, len(loops)))
    fused = sch.fuse(*loops[:n]) if n > 1 else loops[0]
    sch.parallel(fused)
    return fused


def row_vector(w: int, lanes: int) -> int:
    """Vector width for a row of ``w`` contiguous elements: a multiple of the lanes that divides
    ``w``, else the whole row if short (7, 14, 28), else the largest divisor of ``w`` within
    [lanes / 2, 2 * lanes] (56 -> 28); 0 if none fits."""
    for c in (2 * lanes, lanes):
        if w % c == 0:
            return c
    if 2 <= w <= 2 * lanes:
        return w
    return max((d for d in range(lanes // 2, 2 * lanes + 1) if w % d == 0), default=0)


def normalized(func, target: Target):
    """``(schedule, block infos)`` of a CPU PrimFunc in dlight's normal form, or None where a
    rule has nothing to do (another target, not a PrimFunc, no blocks)."""
    if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return (sch, infos) if infos else None
