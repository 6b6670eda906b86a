"""numpy packing helpers: bit order, tails, layouts, validation."""
import numpy as np
import pytest
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref


@pytest.mark.parametrize("L", [1, 3, 63, 64, 65, 130], ids=lambda v: f"len{v}")
def test_pack_bits_matches_independent_reference(L, rng):
    x = rng.choice([-1.0, 1.0], (2, 3, L))
    got = pk.pack_bits(x)
    np.testing.assert_array_equal(got, ref.bitpack_last_ref(x, 0.0))
    assert got.dtype == np.uint64 and got.shape == (2, 3, pk.num_words(L))
    np.testing.assert_array_equal(pk.unpack_bits(got, L), x > 0)


def test_bit_order_lsb_first_and_zero_tail():
    x = -np.ones(65)
    x[0] = 1
    x[64] = 1
    w = pk.pack_bits(x)
    assert w.tolist() == [1, 1]  # channel 0 -> word 0 bit 0; channel 64 -> word 1 bit 0
    assert pk.pack_bits(np.ones(65)).tolist() == [2**64 - 1, 1]  # tail bits zero


def test_pack_bits_axis_moves_last(rng):
    x = rng.choice([-1.0, 1.0], (2, 70, 3))
    np.testing.assert_array_equal(pk.pack_bits(x, axis=1), pk.pack_bits(x.transpose(0, 2, 1)))


def test_pack_conv_weight_layout(rng):
    w = rng.choice([-1.0, 1.0], (5, 70, 3, 2))
    p = pk.pack_conv_weight(w)
    assert p.shape == (3, 2, 2, 5)
    np.testing.assert_array_equal(p[1, 0, :, 4], pk.pack_bits(w[4, :, 1, 0]))
    tpc = pk.conv_tap_popcount(w)
    assert tpc.shape == (3, 2, 5) and tpc.dtype == np.int32
    assert tpc[2, 1, 3] == (w[3, :, 2, 1] > 0).sum()


def test_pack_conv_weight_blocked_layout(rng):
    """x86's layout: channel blocks outermost, ``[KB, KH, KW, CW, block]``, zero past K; the same
    words as the plain layout."""
    w = rng.choice([-1.0, 1.0], (13, 70, 3, 2))
    plain, blocked = pk.pack_conv_weight(w), pk.pack_conv_weight(w, block=8)
    assert blocked.shape == (2, 3, 2, 2, 8)
    np.testing.assert_array_equal(blocked.transpose(1, 2, 3, 0, 4).reshape(3, 2, 2, 16)[..., :13], plain)
    assert not blocked[1, ..., 5:].any()


def test_x86_kernels_take_blocked_conv_weights():
    """The kernel says how to pack its weights: blocked for x86's schedule, plain elsewhere."""
    from bnncompile import schedules as S

    x86 = S.make_bconv2d((1, 64, 8, 8), (16, 64, 3, 3), padding=1, target={"kind": "llvm", "mcpu": "haswell"})
    cpu = S.make_bconv2d((1, 64, 8, 8), (16, 64, 3, 3), padding=1, target={"kind": "llvm", "mcpu": "haswell"},
                         schedule="cpu")
    arm = S.make_bconv2d((1, 64, 8, 8), (16, 64, 3, 3), padding=1,
                         target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert S.weight_block_of(x86) == 8 and S.weight_block_of(cpu) is None and S.weight_block_of(arm) is None


def test_pack_dense_weight_layout(rng):
    w = rng.choice([-1.0, 1.0], (6, 130))
    p = pk.pack_dense_weight(w)
    assert p.shape == (3, 6)
    np.testing.assert_array_equal(p[:, 2], pk.pack_bits(w[2]))


@pytest.mark.parametrize("bad,match", [
    (np.array([[1.0, 0.0]]), "0.0"),
    (np.array([[1.0, 0.5]]), "0.5"),
    (np.array([[1.0, np.nan]]), "nan"),
    (np.array([[1.0, 2.0]]), "2.0"),
], ids=["zero", "half", "nan", "two"])
def test_non_pm1_weights_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        pk.pack_dense_weight(bad)
    with pytest.raises(ValueError, match="conv weight"):
        pk.pack_conv_weight(bad.reshape(1, 2, 1, 1))


def test_needs_border_table():
    assert pk.needs_border_table((1, 1, 1, 1), "zero")
    assert not pk.needs_border_table((0, 0, 0, 0), "zero")
    assert not pk.needs_border_table(1, "one")


@pytest.mark.parametrize("hw,k,stride,pad,dil", [
    ((7, 9), (3, 3), 1, (1, 1, 1, 1), 1),
    ((8, 8), (3, 3), 2, (1, 1, 1, 1), 1),
    ((5, 6), (3, 2), 1, (2, 0, 1, 1), 2),   # asymmetric pads, dilation
    ((3, 3), (5, 5), 1, (2, 2, 2, 2), 1),   # no row has all its taps inside
    ((12, 10), (7, 7), 2, (3, 3, 3, 3), 1),
], ids=["3x3p1", "3x3s2", "asym_dil", "no_interior", "7x7s2"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_border_table_matches_conv_of_all_minus_one(hw, k, stride, pad, dil, layout, rng):
    """An all -1 input packs to zero words everywhere, padding included, so the kernel's
    accumulator is the sum of all tap popcounts and its output, table - 2*acc, must equal the
    zero-padded float conv of that input at every position."""
    K, C = 5, 70
    w = rng.choice([-1.0, 1.0], (K, C, *k))
    x = -np.ones((1, C, *hw))
    conv = ref.bconv2d_ref(x, w, stride=stride, padding=pad, dilation=dil)[0]  # [K, OH, OW]
    acc = pk.conv_tap_popcount(w).sum(axis=(0, 1))  # [K]
    table = pk.conv_border_table(w, hw, stride=stride, padding=pad, dilation=dil, out_layout=layout)
    lo, hi, reps = pk.border_row_classes(hw[0], conv.shape[1], k[0], stride, pad[0], dil)
    assert table.dtype == np.int32 and table.shape[0] == len(reps) < conv.shape[1] + 1
    for oh in range(conv.shape[1]):
        cls = oh if lo >= hi else (oh if oh < lo else lo if oh < hi else oh - hi + lo + 1)
        row = table[cls] if layout == "NCHW" else table[cls].T  # [K, OW]
        np.testing.assert_array_equal(row - 2 * acc[:, None], conv[:, oh])


def test_pack_dense_weight_half_words_are_the_words_halves(rng):
    """``word_bits=32``: rows 2i and 2i + 1 are the low and high halves of word row i."""
    w = np.where(rng.random((5, 130)) < 0.5, -1.0, 1.0).astype(np.float32)
    full, half = pk.pack_dense_weight(w), pk.pack_dense_weight(w, word_bits=32)
    assert half.dtype == np.uint32 and half.shape == (2 * full.shape[0], 5)
    np.testing.assert_array_equal(half[0::2], (full & 0xFFFFFFFF).astype(np.uint32))
    np.testing.assert_array_equal(half[1::2], (full >> 32).astype(np.uint32))
    with pytest.raises(ValueError, match="word_bits"):
        pk.pack_dense_weight(w, word_bits=16)
