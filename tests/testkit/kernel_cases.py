"""Kernel shapes both bit-exact sweeps run: tests/schedules (every CPU schedule on this host) and
tests/aarch64 (under qemu, where each case costs seconds, so it takes these and few more).

Each list is the part the two sweeps share; a sweep appends its own cases after it, so indices
into these stay the same in both."""

import numpy as np

# (x_shape, t_shape): channels around one 64-bit word (63 / 64 / 65 / 130), scalar, per-sample
# and per-channel thresholds
BITPACK_CORE = [
    ((1, 1, 3, 3), ()),
    ((2, 3, 5, 7), (2, 3, 1, 1)),
    ((3, 63, 3, 5), (1, 63, 1, 1)),
    ((1, 64, 4, 4), (1, 1, 1, 1)),
    ((2, 65, 3, 9), (2, 65, 1, 1)),
    ((1, 130, 7, 7), (1, 130, 1, 1)),
    # 1x1 maps with several words and batch > 1 (ResNet layer4 at 32 px): once packed wrongly
    ((2, 512, 1, 1), (2, 512, 1, 1)),
]

# packing along the last axis (tokens): (x_shape, t_shape)
BITPACK_LAST_CASES = [((5, 64), ()), ((2, 7, 65), (2, 1, 65)), ((3, 4, 130), (1, 1, 130)),
                      ((2, 2, 3, 63), (1, 1, 1, 63))]

# (N, C, H, W, K, (KH, KW), stride, padding (t, l, b, r), dilation)
CONV_CORE = [
    (1, 1, 7, 7, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (3, 3, 9, 7, 16, (3, 3), 1, (1, 1, 1, 1), 1),
    (1, 63, 7, 9, 8, (1, 1), 1, (0, 0, 0, 0), 1),
    (2, 64, 9, 9, 12, (3, 3), 2, (1, 1, 1, 1), 1),
    (1, 65, 7, 7, 8, (5, 5), 1, (2, 2, 2, 2), 1),
    (1, 130, 9, 7, 16, (3, 3), 1, (2, 2, 2, 2), 2),
    (3, 65, 7, 9, 5, (3, 1), 2, (0, 1, 2, 0), 1),
    (1, 130, 9, 9, 8, (1, 3), 1, (1, 0, 0, 2), 2),
    (1, 3, 7, 7, 3, (5, 3), 2, (2, 1, 1, 2), 1),
    (1, 64, 7, 7, 8, (3, 3), 1, (0, 0, 0, 0), 1),
    # x86 pixel-vectorised path (one word per pixel, unit w stride, OW % 8 == 0) and the
    # border-branch epilogue: rows + cols, cols only, no interior row, padding never reached.
    (1, 64, 9, 16, 8, (3, 3), 1, (1, 1, 1, 1), 1),
    (2, 32, 5, 32, 12, (3, 3), 1, (1, 1, 1, 1), 1),
]

# ((..., K_in), N_out)
DENSE_CORE = [((5, 64), 8), ((3, 130), 12), ((2, 7, 65), 16), ((1, 1), 3), ((2, 3, 4, 63), 8),
              # x86 row bands: one row split into 8 / 5 bands of tiles; 5 bands of 4 rows
              ((1, 96), 64), ((1, 70), 40), ((20, 128), 24)]

# (a_shape, b_shape, alpha): a @ b^T over the last axis, batch axes broadcast as given
BMM_CORE = [((2, 6, 64), (2, 16, 64), None), ((3, 5, 65), (3, 9, 65), None),
            ((2, 3, 7, 130), (2, 3, 8, 130), 0.125), ((1, 1, 3), (1, 4, 3), None)]


def cut_bounds(rng, n_out: int, k: int):
    """Random ``(lo, hi, sigma)`` of a cut epilogue: intervals, their complements, and bounds
    past either end of the sums ``[-k, k]``."""
    lo = rng.integers(-k - 4, k + 2, n_out)
    hi = lo + rng.integers(0, 2 * k + 6, n_out)
    sigma = np.where(rng.random(n_out) < 0.5, 1, -1)
    return tuple(v.astype(np.int32) for v in (lo, hi, sigma))
