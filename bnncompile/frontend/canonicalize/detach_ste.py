"""The detach straight-through estimator ``Add(Sub(s, p), p)`` → ``s``, for a sign ``s`` of ``x``
and a surrogate ``p`` of the same ``x`` proven to leave ``s`` unchanged.

Bi-Real Net's and ReActNet's official code binarizes activations as
``sign(x).detach() - out3.detach() + out3`` (``out3`` a piecewise polynomial of ``x`` giving the
gradient); exporters write it as ``Add(Sub(Sign(x), P), P)`` with ``P`` a ~23-node graph of
``Less`` masks, ``Cast``, ``Mul``, ``Add``, ``Sub``, ``Neg`` over ``x`` and scalar constants.
After :mod:`.sign` the ``Sign(x)`` is ``DynamicSign(x)`` (``s = +1`` for ``x >= 0``, else -1; the
sign(0) site is reported there).  In float32, ``(s - p) + p == s`` holds exactly when

* ``s = +1`` and ``0 <= p <= 2``: for ``p >= 1/2``, ``1 - p`` is exact (Sterbenz) and so is the sum;
  for ``0 <= p < 1/2``, ``fl(1 - p)`` is within 2^-25 of ``1 - p`` and adding ``p`` back rounds
  to 1;
* ``s = -1`` and ``-2 <= p <= 0`` (the mirror image);

and fails in general (``s = +1``, ``p = -2^-24`` gives ``1 - 2^-24``).  The rule proves the
condition for every float32 ``x`` by interval evaluation of ``P``: the float32 line is cut into
~4,100 intervals (both zeros alone, eight pieces per binade, every comparison constant a cut, so
each ``Less`` / ``Greater`` mask is constant on each piece), and every op of ``P`` is evaluated
on the interval's corners in float32.  That bound is exact-sound: each op is a correctly
rounded float32 operation, monotone in each argument on a box (products on the corners), so the
float32 results over an interval lie between its corner results.  Ops outside ``ADD, SUB, MUL,
DIV, NEG, ABS, comparisons, CAST, WHERE, MIN, MAX, CLIP, IDENTITY``, non-scalar constants, or a
second input: the nodes stay as they are.

Pieces where the proof fails are tolerated at ``|x| >= 2^64`` only: there ReActNet's ``x * x``
overflows and the exported graph itself computes ``inf * 0 = NaN``, so the exported model gives
NaN where the compiled one gives ±1 — as for a NaN input (for other surrogates those magnitudes
are not checked).  Any failing piece with ``|x| < 2^64`` leaves the nodes as they are.
"""

from __future__ import annotations

import numpy as np

from .base import VIA_KEY, SignRule, const_array, producer_cone, sign_producer, threshold

F32 = np.float32
INF = F32(np.inf)
#: beyond this magnitude a surrogate that overflows (x * x) is the export's own NaN
OVERFLOW = F32(2.0**64)
MAX_CONE = 64
_COMPARE = {"Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
            "GreaterOrEqual": np.greater_equal, "Equal": np.equal}
_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Cast", "Where", "Min", "Max", "Clip",
                  "Identity", *_COMPARE})


def surrogate_cone(p, x) -> list | None:
    """The nodes computing ``p`` from ``x`` and scalar constants only (graph order), or None."""
    return producer_cone(p, _OPS, limit=MAX_CONE, stop=x, scalar_constants=True)


def _breakpoints(extra) -> np.ndarray:
    """Sorted float32 cut points: ±2^k (1 + j/8) over every binade, 0, ±inf, ``extra``."""
    mags = [F32(2.0**-149) * F32(j) for j in range(1, 8)]  # the subnormal binades, coarsely
    for k in range(-126, 128):
        mags += [F32(2.0**k) * F32(1 + j / 8) for j in range(8)]
    mags = np.array([m for m in mags if np.isfinite(m)], F32)
    pts = np.concatenate([-mags, mags, [F32(0), INF, -INF], np.asarray(extra, F32).reshape(-1)])
    pts = np.unique(pts[~np.isnan(pts)])
    return pts


def intervals(extra=()) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` float32 arrays covering every float32 except NaN: the singletons -inf, -0.0,
    +0.0, +inf and ``[b_i, prev(b_{i+1})]`` between cut points (every ``extra`` value starts a
    piece, so a comparison with it is constant on each piece)."""
    fmax = np.finfo(F32).max
    inner = np.nextafter(OVERFLOW, F32(0))  # so +-2^64 are pieces of their own
    b = _breakpoints([*extra, fmax, -fmax, inner, -inner])
    b = b[np.isfinite(b) & (b != 0)]
    neg, pos = b[b < 0], b[b > 0]
    single = np.array([-INF, F32(-0.0), F32(0.0), INF], F32)
    hi_neg = np.nextafter(np.concatenate([neg[1:], [F32(-0.0)]]).astype(F32), -INF)
    hi_pos = np.nextafter(np.concatenate([pos[1:], [INF]]).astype(F32), -INF)
    lo = np.concatenate([single, neg, pos]).astype(F32)
    hi = np.concatenate([single, hi_neg, hi_pos]).astype(F32)
    return lo, hi


class _Interval:
    """Float32 bounds per piece; ``bad`` marks pieces where a bound is NaN (unprovable)."""

    def __init__(self, lo, hi, bad=None):
        self.lo, self.hi = np.asarray(lo, F32), np.asarray(hi, F32)
        nan = np.isnan(self.lo) | np.isnan(self.hi)
        self.bad = nan if bad is None else (bad | nan)

    @classmethod
    def corners(cls, values, bad):
        stack = np.stack(values)
        nan = np.isnan(stack).any(axis=0)
        with np.errstate(invalid="ignore"):
            return cls(np.nanmin(np.where(nan, 0, stack), axis=0).astype(F32),
                       np.nanmax(np.where(nan, 0, stack), axis=0).astype(F32), bad | nan)


def _binary(fn, a: _Interval, b: _Interval) -> _Interval:
    with np.errstate(all="ignore"):
        corners = [fn(u, v).astype(F32) for u in (a.lo, a.hi) for v in (b.lo, b.hi)]
    return _Interval.corners(corners, a.bad | b.bad)


def evaluate(nodes, x, x_lo, x_hi) -> _Interval | None:
    """Interval value of the last node's output for ``x`` in ``[x_lo, x_hi]`` (per piece)."""
    env = {id(x): _Interval(x_lo, x_hi)}

    def get(v):
        if id(v) in env:
            return env[id(v)]
        a = const_array(v)
        c = F32(a.reshape(-1)[0]) if a.dtype.kind == "f" else a.reshape(-1)[0]
        iv = _Interval(np.full_like(x_lo, c, dtype=F32), np.full_like(x_lo, c, dtype=F32))
        env[id(v)] = iv
        return iv

    out = None
    for node in nodes:
        ins = [get(v) if v is not None else None for v in node.inputs]
        op = node.op_type
        if op in ("Add", "Sub", "Mul", "Div"):
            a, b = ins
            if op == "Div":
                spans0 = (b.lo <= 0) & (b.hi >= 0)
                out = _binary(np.divide, a, b)
                out.bad |= spans0
            else:
                out = _binary({"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op], a, b)
        elif op == "Neg":
            out = _Interval(-ins[0].hi, -ins[0].lo, ins[0].bad)
        elif op == "Abs":
            a = ins[0]
            lo = np.where((a.lo <= 0) & (a.hi >= 0), F32(0), np.minimum(np.abs(a.lo), np.abs(a.hi)))
            out = _Interval(lo, np.maximum(np.abs(a.lo), np.abs(a.hi)), a.bad)
        elif op in ("Identity", "Cast"):
            a = ins[0]
            to = node.attributes.get("to")
            if op == "Cast" and to is not None and int(to.as_int()) != 1:
                return None
            out = _Interval(a.lo, a.hi, a.bad)
        elif op in _COMPARE:
            a, b = ins
            fn = _COMPARE[op]
            with np.errstate(invalid="ignore"):
                always = fn(a.lo, b.lo) & fn(a.lo, b.hi) & fn(a.hi, b.lo) & fn(a.hi, b.hi)
                never = ~(fn(a.lo, b.lo) | fn(a.lo, b.hi) | fn(a.hi, b.lo) | fn(a.hi, b.hi))
            if op == "Equal":  # only a point equality is decided
                always = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
                never = (a.hi < b.lo) | (b.hi < a.lo)
            out = _Interval(np.where(always, F32(1), F32(0)), np.where(never, F32(0), F32(1)),
                            a.bad | b.bad)
        elif op == "Where":
            c, a, b = ins
            t, f = c.lo == 1, c.hi == 0
            lo = np.where(t, a.lo, np.where(f, b.lo, np.minimum(a.lo, b.lo)))
            hi = np.where(t, a.hi, np.where(f, b.hi, np.maximum(a.hi, b.hi)))
            out = _Interval(lo, hi, c.bad | a.bad | b.bad)
        elif op in ("Min", "Max"):
            fn = np.minimum if op == "Min" else np.maximum
            lo, hi, bad = ins[0].lo, ins[0].hi, ins[0].bad
            for b in ins[1:]:
                lo, hi, bad = fn(lo, b.lo), fn(hi, b.hi), bad | b.bad
            out = _Interval(lo, hi, bad)
        elif op == "Clip":
            a = ins[0]
            lo, hi = a.lo, a.hi
            if len(ins) > 1 and ins[1] is not None:
                lo, hi = np.maximum(lo, ins[1].lo), np.maximum(hi, ins[1].hi)
            if len(ins) > 2 and ins[2] is not None:
                lo, hi = np.minimum(lo, ins[2].lo), np.minimum(hi, ins[2].hi)
            out = _Interval(lo, hi, a.bad)
        else:
            return None
        env[id(node.outputs[0])] = out
    return out


def proves_identity(nodes, x, p, extra=()) -> bool:
    """``(s - p) + p == s`` for every float32 ``x`` (``s = +1`` for ``x >= 0``, else -1), except
    where ``|x| >= 2^64`` (see the module docstring)."""
    lo, hi = intervals(extra)
    iv = evaluate(nodes, x, lo, hi)
    if iv is None or nodes[-1].outputs[0] is not p:
        return False
    nonneg = lo >= 0  # -0.0 >= 0: the -0.0 singleton is a "+1" piece, as in DynamicSign
    ok = np.where(nonneg, (iv.lo >= 0) & (iv.hi <= 2), (iv.lo >= -2) & (iv.hi <= 0)) & ~iv.bad
    huge = np.minimum(np.abs(lo), np.abs(hi)) >= OVERFLOW
    return bool(np.all(ok | huge))


class _DetachSte(SignRule):
    p_first = False
    via = "sign(x).detach() - p(x).detach() + p(x)"

    def pattern(self, op, s, p):
        d = op.Sub(s, p)
        return op.Add(p, d) if self.p_first else op.Add(d, p)

    def check(self, context, s, p, **_):
        sign = sign_producer(s)
        if sign is None:
            return False
        t = threshold(sign)
        if t is not None:
            a = const_array(t)
            if a is None or a.size != 1 or float(a.reshape(-1)[0]) != 0.0:
                return False
        x = sign.inputs[0]
        nodes = surrogate_cone(p, x)
        if not nodes or nodes[-1].outputs[0] is not p:
            return False
        cuts = []
        for n in nodes:
            if n.op_type in _COMPARE:
                cuts += [float(const_array(v).reshape(-1)[0]) for v in n.inputs
                         if v is not None and const_array(v) is not None]
        if not proves_identity(nodes, x, p, cuts):
            return False
        return self.matched(context)

    def rewrite(self, op, s, p, **_):
        node = s.producer()
        spelling = node.metadata_props.get(VIA_KEY) or "DynamicSign"
        node.metadata_props[VIA_KEY] = f"{spelling} + detach STE"
        return s


class DetachSte(_DetachSte):
    p_first = False


class DetachStePFirst(_DetachSte):
    p_first = True


RULES = (DetachSte, DetachStePFirst)
ROOT_OPS = frozenset()
