"""QONNX / FINN ``Quant(x, scale, zeropt, bitwidth)``: a 1-bit signed one → ``DynamicSign(x, T)``
(times ``scale``); every other one → the standard float ops that compute it.

qonnx 1.0's ``int_quant`` (``custom_op/general/intquant.py``), in float32 numpy::

    y = x / scale + zeropt
    if bitwidth == 1 and signed:  y = where(y >= 0, 1, -1)           # "1-bit IntQuant" is bipolar
    else:                         y = round(clamp(y, min_int, max_int))   # clamp first, then round
    out = (y - zeropt) * scale

* **bipolar** (``bitwidth == 1``, ``signed``, ``zeropt == 0``, ``scale`` a constant > 0): the
  condition ``fl(x / scale) >= 0`` is a monotone function of ``x`` (correctly rounded division
  by a positive number is monotone), so it holds exactly for ``x >= T`` with ``T`` the least
  float32 where it holds — found per scale element by bisection over the ordered float32 values
  (``T`` is 0 for ``scale <= 1``; for ``scale > 1`` it is the negative subnormal whose quotient
  rounds to -0).  Then ``out = DynamicSign(x, T) * scale`` exactly (a product with ±1 does not
  round; ``T`` has the broadcast shape of scale and zeropt, which must broadcast onto ``x``).  NaN
  gives -1 in both.  ``zeropt != 0`` gives two magnitudes ``(±1 - z) * s``: no sign, float below.
* **float** (anything else with constant bitwidth / attributes): the same float32 operations as
  ONNX ops — ``Div``, ``Add``, the clamp as ``Where(Greater(y, max), max, y)`` /
  ``Where(Less(y, min), min, y)`` (NaN passes, as in numpy), the rounding mode (``ROUND`` /
  ``HALF_EVEN`` → ``Round``, half to even like ``np.round``; ``CEIL``, ``FLOOR``; ``DOWN``, ``UP``,
  ``HALF_UP``, ``HALF_DOWN``, which qonnx writes as ``sign(y) * f(|y|)``, as ``Where(y < 0, ...)``),
  ``Sub``, ``Mul``: every one is correctly rounded IEEE float32, so the values are qonnx's (FINN's
  CNV 8-bit input quantizer compiles as a float layer instead of failing as an unknown op).
"""

from __future__ import annotations

import numpy as np

from .base import SignRule, attr_int, attr_str, const_array, static_dims

DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")

_POS_INF = 0x7F800000


def _ordered_to_float(o: np.ndarray) -> np.ndarray:
    """float32 values of ordered integer keys (0 is ±0; negative keys are negative floats)."""
    bits = np.where(o >= 0, o, (-o) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def bipolar_threshold(scale: np.ndarray, zeropt: np.ndarray) -> np.ndarray:
    """Least float32 ``T`` (per broadcast element) with ``x / scale + zeropt >= 0`` in float32;
    scale > 0 and finite, zeropt finite (then -inf fails and +inf holds)."""
    scale = np.asarray(scale, np.float32)
    zeropt = np.asarray(zeropt, np.float32)
    shape = np.broadcast_shapes(scale.shape, zeropt.shape)
    s, z = np.broadcast_to(scale, shape), np.broadcast_to(zeropt, shape)
    lo = np.full(shape, -_POS_INF, np.int64)  # -inf: never holds
    hi = np.full(shape, _POS_INF, np.int64)  # +inf: always holds

    def holds(o):
        with np.errstate(all="ignore"):
            return (_ordered_to_float(o) / s + z) >= np.float32(0)

    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = holds(mid)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return _ordered_to_float(hi).astype(np.float32).reshape(shape)


def _int_range(signed: int, narrow: int, bits: int) -> tuple[int, int]:
    if signed:
        lo = -(2 ** (bits - 1)) + (1 if narrow else 0)
        hi = 2 ** (bits - 1) - 1
    else:
        lo = 0
        hi = 2**bits - (2 if narrow else 1)
    return lo, hi


_ROUNDING = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "DOWN", "UP", "HALF_UP", "HALF_DOWN")


class _Quant(SignRule):
    domain = ""
    via = "Quant(x, scale, 0, bitwidth=1, signed=1)"

    def pattern(self, op, x, scale, zeropt, bitwidth):
        return op.Quant(x, scale, zeropt, bitwidth, _domain=self.domain)

    def check(self, context, x, scale, zeropt, bitwidth, **_):
        root = context.root
        bits = const_array(bitwidth)
        if bits is None or bits.size != 1 or float(bits.reshape(-1)[0]) != int(bits.reshape(-1)[0]):
            return False
        self._bits = int(bits.reshape(-1)[0])
        self._signed = attr_int(root, "signed", 1)
        self._narrow = attr_int(root, "narrow", 1)
        self._mode = (attr_str(root, "rounding_mode", "ROUND") or "ROUND").upper()
        if self._bits < 1 or self._bits > 32 or self._signed is None or self._narrow is None:
            return False
        self._bipolar = self._bits == 1 and bool(self._signed)
        if not self._bipolar and self._mode not in _ROUNDING:
            return False
        self._threshold = None
        if self._bipolar:
            s, z = const_array(scale), const_array(zeropt)
            if (s is not None and z is not None and s.dtype.kind == "f" and z.dtype.kind in "fiu"
                    and np.all(np.isfinite(s)) and np.all(s > 0) and np.all(z == 0)):
                t = bipolar_threshold(s, z)
                if _broadcasts(t.shape, static_dims(x)):
                    self._threshold = t
        return self.matched(context)

    def rewrite(self, op, x, scale, zeropt, bitwidth, **_):
        name = self.root_name
        if self._threshold is not None:
            t = self._threshold
            zero = t.size == 1 and float(t.reshape(-1)[0]) == 0.0
            tv = None if zero else self.const(op, t, "threshold")
            y = self.dynamic_sign(op, x, tv)
            s = const_array(scale)
            unit = s.size == 1 and float(s.reshape(-1)[0]) == 1.0
            if unit and _broadcasts(s.shape, static_dims(x)):
                return y
            return self.emit(op, "Mul", [y, scale], f"{name}/scale")
        return self._float(op, x, scale, zeropt, name)

    def _float(self, op, x, scale, zeropt, name):
        f32 = np.float32
        y = self.emit(op, "Div", [x, scale], f"{name}/div")
        y = self.emit(op, "Add", [y, zeropt], f"{name}/zeropt")
        if self._bipolar:
            ge = self.emit(op, "GreaterOrEqual", [y, self.const(op, f32(0), "zero")], f"{name}/ge")
            one, minus_one = self.const(op, f32(1), "one"), self.const(op, f32(-1), "minus_one")
            y = self.emit(op, "Where", [ge, one, minus_one], f"{name}/bipolar")
        else:
            lo, hi = _int_range(self._signed, self._narrow, self._bits)
            lo_v, hi_v = self.const(op, f32(lo), "min_int"), self.const(op, f32(hi), "max_int")
            gt = self.emit(op, "Greater", [y, hi_v], f"{name}/gt_max")
            y = self.emit(op, "Where", [gt, hi_v, y], f"{name}/clamp_max")
            lt = self.emit(op, "Less", [y, lo_v], f"{name}/lt_min")
            y = self.emit(op, "Where", [lt, lo_v, y], f"{name}/clamp_min")
            y = self._round(op, y, name)
        y = self.emit(op, "Sub", [y, zeropt], f"{name}/unzeropt")
        return self.emit(op, "Mul", [y, scale], f"{name}/rescale")

    def _round(self, op, y, name):
        """qonnx's rounding modes; its ``np.sign(y) * f(np.abs(y))`` forms as ``Where(y < 0, ...)``
        (equal for every value: at y = 0 both give a zero; no ``Sign`` node is created, which the
        Sign rule would otherwise take for a binarizer)."""
        mode = self._mode
        if mode in ("ROUND", "HALF_EVEN"):
            return self.emit(op, "Round", [y], f"{name}/round")
        if mode == "CEIL":
            return self.emit(op, "Ceil", [y], f"{name}/round")
        if mode == "FLOOR":
            return self.emit(op, "Floor", [y], f"{name}/round")
        neg = self.emit(op, "Less", [y, self.const(op, np.float32(0), "zero")], f"{name}/round_neg")
        if mode in ("DOWN", "UP"):  # np.fix: toward zero; UP: away from zero
            fl = self.emit(op, "Floor", [y], f"{name}/round_floor")
            ce = self.emit(op, "Ceil", [y], f"{name}/round_ceil")
            pick = [neg, ce, fl] if mode == "DOWN" else [neg, fl, ce]
            return self.emit(op, "Where", pick, f"{name}/round")
        mag = self.emit(op, "Abs", [y], f"{name}/round_abs")
        half = self.const(op, np.float32(0.5), "half")
        if mode == "HALF_UP":
            mag = self.emit(op, "Add", [mag, half], f"{name}/round_half")
            mag = self.emit(op, "Floor", [mag], f"{name}/round_floor")
        else:  # HALF_DOWN
            mag = self.emit(op, "Sub", [mag, half], f"{name}/round_half")
            mag = self.emit(op, "Ceil", [mag], f"{name}/round_ceil")
        negated = self.emit(op, "Neg", [mag], f"{name}/round_negate")
        return self.emit(op, "Where", [neg, negated, mag], f"{name}/round")


def _broadcasts(t_shape, x_dims) -> bool:
    """A constant of ``t_shape`` broadcasts onto ``x`` without changing its shape."""
    if all(d == 1 for d in t_shape):
        return len(t_shape) == 0 or (x_dims is not None and len(t_shape) <= len(x_dims))
    if x_dims is None or len(t_shape) > len(x_dims):
        return False
    return all(td == 1 or td == xd for td, xd in zip(reversed(t_shape), reversed(x_dims)))


class QonnxQuant(_Quant):
    domain = DOMAINS[0]


class FinnQuant(_Quant):
    domain = DOMAINS[1]


RULES = (QonnxQuant, FinnQuant)
ROOT_OPS = frozenset({"Quant"})
