"""numpy packing helpers: bit order, tails, layouts, validation."""
import numpy as np
import pytest

from schedules import packing as pk
from schedules import reference as ref


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


def test_needs_tap_popcount():
    assert pk.needs_tap_popcount((1, 1, 1, 1), "zero")
    assert not pk.needs_tap_popcount((0, 0, 0, 0), "zero")
    assert not pk.needs_tap_popcount(1, "one")
