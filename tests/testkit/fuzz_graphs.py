"""Random ONNX graphs over every pattern the frontend claims (hypothesis strategies).

A generated model holds 1-3 independent *cases*, each with its own inputs and outputs, so one
TVM build checks several patterns.  The cases:

* ``conv``: DynamicSign (threshold absent, scalar, per channel, per sample and channel computed
  from the map's statistics) → [Pad 0/1] → Conv with ±1 weights (kernel 1-7, stride, dilation,
  groups, symmetric / asymmetric pads, auto_pad) → a float epilogue chain (scale Mul, BN,
  residual Add, PRelu, RPReLU, ReLU, a second binary conv reading a constant-threshold sign) or
  two sibling convs under a channel Concat;
* ``dense``: DynamicSign (absent, scalar, per feature, per token computed, DyBinaryCCT's MLP over
  the tokens) → Gemm (transA, transB,
  alpha, beta, bias) or MatMul with ±1 weights, ranks 2-3, optional scale Mul;
* ``bmm``: both operands DynamicSign outputs, 3-D / 4-D, B given as ``[.., K, N]``, as
  ``Transpose`` of ``[.., N, K]``, or through ``Reshape`` + ``Transpose`` into heads; batch dims
  broadcast; optional scalar scale;
* ``attention``: ``MatMul(Softmax(S), V)`` with S a float input or a binary ``Q·Kᵀ`` (both DynamicSign
  outputs, through heads like a transformer's, times ``1/sqrt(d)``), V a float input (optionally
  split into heads by ``Reshape`` + ``Transpose`` and merged back after; or rank 3 without
  heads), K and N around the
  4-value words and 16-column blocks of ``--attention-precision int8``; optionally a softmax over
  another axis, or values broadcast over the batch (those products stay float), and a
  DynamicSign + binary dense reading the product;
* ``float_conv``: a float Conv (a stem, a shortcut: float weights, optional bias, kernel 1-7,
  stride, dilation, symmetric / asymmetric pads), optionally read by a DynamicSign and a 1x1
  binary conv: bnncompile's own float conv kernel, and with ``--conv-precision`` its quantized
  twin.

Data are integer-valued floats, thresholds integer constants (so ``x == t`` ties are common and
exact) or statistics plus a non-integer offset (no near-ties that depend on summation order).
Dimensions cluster around the word size (63/64/65, 127-129) and odd sizes, one row / one column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st
from onnx import helper

from testkit.onnx_graphs import DS_DOMAIN

CHANNELS = [1, 2, 3, 5, 31, 63, 64, 65, 127, 128, 129]
SMALL_CHANNELS = [1, 2, 3, 5, 8, 16, 63, 64, 65]
FEATURES = [1, 2, 3, 7, 63, 64, 65, 129]


@dataclass
class Case:
    """Nodes, graph inputs (name -> array), initializers and outputs of one pattern instance.
    ``exact`` outputs are integer accumulators: compared bit for bit."""

    kind: str
    nodes: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    inits: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    exact: set = field(default_factory=set)
    #: nodes that must stay float, with the word their reason must contain
    float_nodes: dict = field(default_factory=dict)
    #: attention products ``--attention-precision int8`` must quantize / must leave float
    quantized: set = field(default_factory=set)
    not_quantized: set = field(default_factory=set)
    #: absolute tolerance of an output against the quantized reference (int8 attention): one
    #: probability level an ulp from a rounding boundary, times the largest value
    quantized_atol: dict = field(default_factory=dict)
    describe: list = field(default_factory=list)


class Builder:
    """Unique names and a seeded numpy generator for one case."""

    def __init__(self, prefix: str, seed: int):
        self.p = prefix
        self.rng = np.random.default_rng(seed)
        self.case = None
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{self.p}{base}{self._n}"

    def init(self, base: str, value) -> str:
        n = self.name(base)
        self.case.inits[n] = np.asarray(value)
        return n

    def input(self, base: str, shape, lo=-3, hi=3) -> str:
        n = self.name(base)
        self.case.inputs[n] = self.rng.integers(lo, hi + 1, size=shape).astype(np.float32)
        return n

    def node(self, op, inputs, n_out=1, domain="", **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.case.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain,
                                                **attrs))
        return outs

    def pm1(self, shape) -> np.ndarray:
        return np.where(self.rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)

    def vec(self, shape, lo=0.25, hi=2.0, signed=True) -> np.ndarray:
        v = self.rng.uniform(lo, hi, size=shape).astype(np.float32)
        if signed:
            v *= np.where(self.rng.random(shape) < 0.3, -1, 1).astype(np.float32)
        return v


# -- thresholds ----------------------------------------------------------------------------------

def threshold(b: Builder, x: str, kind: str, shape, *, channel_axis: int) -> str | None:
    """A DynamicSign threshold of ``kind`` for input ``x`` of ``shape``."""
    rank = len(shape)
    if kind == "absent":
        return None
    if kind == "scalar":
        return b.init("t", np.float32(b.rng.integers(-1, 2)))
    if kind == "channel":  # a learned per-channel constant (RSign), [1, C, 1, 1] or [C, 1, 1]
        tshape = [1] * rank
        tshape[channel_axis] = shape[channel_axis]
        t = b.rng.integers(-2, 3, size=tshape).astype(np.float32)
        return b.init("t", t[0] if rank > 2 and b.rng.random() < 0.5 else t)
    if kind == "computed":  # statistics of x over the other axes + a non-integer offset
        axes = [a for a in range(1, rank) if a != channel_axis]
        src = x
        if b.rng.random() < 0.5:  # INSTA-like E[x^3]
            (sq,) = b.node("Mul", [x, x])
            (src,) = b.node("Mul", [sq, x])
        if axes:
            (m,) = b.node("ReduceMean", [src, b.init("axes", np.array(axes, np.int64))], keepdims=1)
        else:
            m = src
        (t,) = b.node("Add", [m, b.init("off", np.float32(0.3721))])
        return t
    if kind == "token_mlp":  # DyBinaryCCT's: mean over the tokens -> FC -> Relu -> FC -> + alpha0
        d = shape[2]
        r = int(b.rng.integers(1, 6))
        (m,) = b.node("ReduceMean", [x, b.init("axes", np.array([1], np.int64))], keepdims=0)
        w1, b1 = b.vec((r, d), 0.05, 0.6), b.vec((r,), 0.0, 0.5)
        gemm = b.rng.random() < 0.5  # PyTorch's Linear as Gemm(transB) / as MatMul + Add
        if gemm:
            (h,) = b.node("Gemm", [m, b.init("w1", w1), b.init("b1", b1)], transB=1)
        else:
            (h,) = b.node("MatMul", [m, b.init("w1", np.ascontiguousarray(w1.T))])
        b.case.float_nodes[b.case.nodes[-1].name] = "DynamicSign"  # its input is a mean
        if not gemm:
            (h,) = b.node("Add", [h, b.init("b1", b1)])
        (h,) = b.node("Relu", [h])
        (g,) = b.node("Gemm", [h, b.init("w2", b.vec((d, r), 0.05, 0.6))], transB=1)
        b.case.float_nodes[b.case.nodes[-1].name] = "DynamicSign"
        (t,) = b.node("Add", [g, b.init("alpha0", b.vec((d,), 0.0, 0.5))])
        (t,) = b.node("Unsqueeze", [t, b.init("axes", np.array([1], np.int64))])  # [N, 1, D]
        return t
    raise ValueError(kind)


def sign(b: Builder, x: str, t: str | None) -> str:
    (s,) = b.node("DynamicSign", [x] + ([t] if t else []), domain=DS_DOMAIN)
    return s


# -- conv ----------------------------------------------------------------------------------------

@st.composite
def conv_case(draw, prefix: str) -> Case:
    b = Builder(prefix, draw(st.integers(0, 2**31 - 1)))
    b.case = case = Case("conv")
    n = draw(st.sampled_from([1, 1, 2, 3]))
    c = draw(st.sampled_from(CHANNELS))
    k = draw(st.sampled_from(SMALL_CHANNELS))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2])))
    pad_mode = draw(st.sampled_from(["none", "sym", "asym", "SAME_UPPER", "SAME_LOWER", "VALID",
                                     "pad0", "pad1"]))
    pads = [0, 0, 0, 0]
    if pad_mode == "sym":
        p = draw(st.integers(1, 3))
        pads = [p, p, p, p]
    elif pad_mode in ("asym", "pad0", "pad1"):
        pads = [draw(st.integers(0, 3)) for _ in range(4)]
    eff_h, eff_w = h + pads[0] + pads[2], w + pads[1] + pads[3]
    if pad_mode in ("SAME_UPPER", "SAME_LOWER"):
        eff_h, eff_w = h + 6, w + 6  # any kernel fits once padded
        dil = (1, 1)  # ONNX Runtime (the reference) refuses dilation with auto_pad SAME
    kh = draw(st.integers(1, max(1, min(7, (eff_h - 1) // dil[0] + 1))))
    kw = draw(st.integers(1, max(1, min(7, (eff_w - 1) // dil[1] + 1))))
    groups = 2 if c % 2 == 0 and k % 2 == 0 and draw(st.integers(0, 9)) == 0 else 1
    tkind = draw(st.sampled_from(["absent", "scalar", "channel", "computed"]))
    epilogue = draw(st.lists(st.sampled_from(["scale", "bn", "residual", "prelu", "rprelu", "relu"]),
                             max_size=4))
    next_sign = draw(st.booleans())
    siblings = groups == 1 and draw(st.integers(0, 5)) == 0
    expose_raw = draw(st.integers(0, 5)) == 0
    case.describe = [f"conv n{n} c{c} k{k} {h}x{w} kernel {kh}x{kw} stride {stride} dil {dil} "
                     f"pad {pad_mode} {pads} groups {groups} threshold {tkind} epilogue {epilogue} "
                     f"next_sign {next_sign} siblings {siblings} raw {expose_raw}"]

    x = b.input("x", (n, c, h, w))
    s = sign(b, x, threshold(b, x, tkind, (n, c, h, w), channel_axis=1))
    conv_in, attrs = s, {}
    if pad_mode in ("pad0", "pad1"):
        spatial = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
        (conv_in,) = b.node("Pad", [s, b.init("pads", spatial),
                                    b.init("pv", np.float32(pad_mode == "pad1"))], mode="constant")
    elif pad_mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs["auto_pad"] = pad_mode
    elif pad_mode != "none":
        attrs["pads"] = pads

    def conv(k_out):
        wt = b.init("w", b.pm1((k_out, c // groups, kh, kw)))
        (y,) = b.node("Conv", [conv_in, wt], kernel_shape=[kh, kw], strides=list(stride),
                      dilations=list(dil), group=groups, **attrs)
        return y

    y = conv(k)
    if groups != 1:
        case.float_nodes[b.case.nodes[-1].name] = "group"
    out_shape = _conv_out((n, c, h, w), k, (kh, kw), stride, dil, pad_mode, pads)
    if expose_raw:
        case.outputs.append(y)
        case.exact.add(y)
    if siblings:
        y2 = conv(k)
        y, y2 = (_epilogue(b, v, k, ["bn"], out_shape) for v in (y, y2))
        res = b.input("res", out_shape)
        (y,) = b.node("Add", [y, res])
        (y2,) = b.node("Add", [y2, res])
        (y,) = b.node("Concat", [y, y2], axis=1)
        k, out_shape = 2 * k, (out_shape[0], 2 * k, *out_shape[2:])
    y = _epilogue(b, y, k, epilogue, out_shape)
    if next_sign:  # a constant-threshold sign of the chain's output, read by a 1x1 binary conv
        t = b.init("t", b.vec((1, k, 1, 1), -1.0, 1.0))
        s2 = sign(b, y, t)
        (y,) = b.node("Conv", [s2, b.init("w", b.pm1((3, k, 1, 1)))], kernel_shape=[1, 1])
    case.outputs.append(y)
    return case


def _conv_out(shape, k, kernel, stride, dil, pad_mode, pads):
    n, _c, h, w = shape
    outs = []
    for i, size in enumerate((h, w)):
        ext = (kernel[i] - 1) * dil[i] + 1
        if pad_mode in ("SAME_UPPER", "SAME_LOWER"):
            outs.append(-(-size // stride[i]))
        else:
            p = 0 if pad_mode in ("none", "VALID") else pads[i] + pads[i + 2]
            outs.append((size + p - ext) // stride[i] + 1)
    return (n, k, *outs)


def _epilogue(b: Builder, y: str, k: int, steps, out_shape) -> str:
    for step in steps:
        if step == "scale":
            (y,) = b.node("Mul", [y, b.init("a", b.vec((1, k, 1, 1)))])
        elif step == "bn":
            (y,) = b.node("BatchNormalization", [y, b.init("g", b.vec(k)), b.init("be", b.vec(k)),
                                                 b.init("mu", b.vec(k)), b.init("var", b.vec(k, 0.5, 2.0, False))])
        elif step == "residual":
            (y,) = b.node("Add", [y, b.input("res", out_shape)])
        elif step == "prelu":
            (y,) = b.node("PRelu", [y, b.init("sl", b.vec((k, 1, 1), 0.05, 0.5))])
        elif step == "rprelu":  # RPReLU as the dynamo exporter writes it
            (y,) = b.node("Add", [y, b.init("sh", b.vec((1, k, 1, 1)))])
            (ge,) = b.node("GreaterOrEqual", [y, b.init("z", np.float32(0))])
            (m,) = b.node("Mul", [y, b.init("sl", b.vec((1, k, 1, 1), 0.05, 0.5))])
            (y,) = b.node("Where", [ge, y, m])
            (y,) = b.node("Add", [y, b.init("sh", b.vec((1, k, 1, 1)))])
        elif step == "relu":
            (y,) = b.node("Relu", [y])
    return y


# -- dense ---------------------------------------------------------------------------------------

@st.composite
def dense_case(draw, prefix: str) -> Case:
    b = Builder(prefix, draw(st.integers(0, 2**31 - 1)))
    b.case = case = Case("dense")
    op = draw(st.sampled_from(["Gemm", "MatMul", "MatMul"]))
    rank = 2 if op == "Gemm" else draw(st.sampled_from([2, 3]))
    lead = [draw(st.sampled_from([1, 1, 2, 3, 5, 8]))] + ([draw(st.sampled_from([1, 3, 17]))] if rank == 3 else [])
    kin, nout = draw(st.sampled_from(FEATURES)), draw(st.sampled_from(FEATURES))
    tkind = draw(st.sampled_from(["absent", "scalar", "channel", "computed"] + ["token_mlp"] * (rank == 3)))
    scale = draw(st.booleans())
    case.describe = [f"dense {op} lead {lead} k{kin} n{nout} threshold {tkind} scale {scale}"]
    x = b.input("x", (*lead, kin))
    s = sign(b, x, threshold(b, x, tkind, (*lead, kin), channel_axis=rank - 1))
    if op == "Gemm":
        trans_a, trans_b = draw(st.integers(0, 9)) == 0, draw(st.booleans())
        alpha = draw(st.sampled_from([1.0, 1.0, 0.5, -2.0, 0.37]))
        beta = draw(st.sampled_from([1.0, 1.0, 0.0, 2.0, -0.25]))
        bias = draw(st.sampled_from(["none", "vector", "row", "scalar"]))
        case.describe.append(f"transA {trans_a} transB {trans_b} alpha {alpha} beta {beta} bias {bias}")
        a = s
        if trans_a:  # A must be [K, M]: transpose the sign's output
            (a,) = b.node("Transpose", [s], perm=[1, 0])
        wt = b.pm1((nout, kin) if trans_b else (kin, nout))
        ins = [a, b.init("w", wt)]
        if bias != "none":
            cshape = {"vector": (nout,), "row": (1, nout), "scalar": ()}[bias]
            ins.append(b.init("c", b.vec(cshape)))
        (y,) = b.node("Gemm", ins, transA=int(trans_a), transB=int(trans_b), alpha=alpha, beta=beta)
        if trans_a:
            case.float_nodes[case.nodes[-1].name] = "input is not a DynamicSign"
        exact = bias == "none" and alpha == 1.0 and not trans_a
    else:
        (y,) = b.node("MatMul", [s, b.init("w", b.pm1((kin, nout)))])
        exact = True
    if scale:
        (y,) = b.node("Mul", [y, b.init("a", b.vec((nout,)))])
        exact = False
    chain = draw(st.sampled_from(["none", "none", "gelu", "square", "tanh_neg", "sigmoid", "cubic",
                                  "residual"]))
    if chain == "residual":  # a bias and a residual stream added after it (dense_epilogue)
        case.describe.append("then + bias + residual")
        (h,) = b.node("Add", [y, b.init("c", b.vec((nout,), -1.0, 1.0))])
        (z,) = b.node("Add", [b.input("r", (*lead, nout)), h])
        case.outputs.append(z)
        return case
    if chain != "none":  # the output only reaches a sign through elementwise nodes (count_threshold)
        case.describe.append(f"then {chain} -> DynamicSign -> binary MatMul")
        z = sign_chain(b, y, chain, nout, rank)
        case.outputs.append(z)
        case.exact.add(z)  # a sum of signs: one sign decided otherwise moves it by 2
        return case
    case.outputs.append(y)
    if exact:
        case.exact.add(y)
    return case


def sign_chain(b: Builder, y: str, chain: str, n: int, rank: int) -> str:
    """``y`` through an elementwise ``chain`` with per-channel constants, a DynamicSign with a
    constant threshold, and a binary MatMul: a transformer MLP's ``GELU(y + c)`` and other
    shapes of +1 sets (an interval of sums, its complement, three runs that stay float)."""
    if chain == "gelu":
        (h,) = b.node("Add", [y, b.init("c", b.vec((n,), -1.0, 1.0))])
        (d,) = b.node("Div", [h, b.init("sqrt2", np.float32(np.sqrt(2)))])
        (e,) = b.node("Erf", [d])
        (e1,) = b.node("Add", [e, b.init("one", np.float32(1))])
        (g0,) = b.node("Mul", [e1, b.init("half", np.float32(0.5))])
        (g,) = b.node("Mul", [h, g0])
        t = b.rng.uniform(-0.16, 0.5, n)
    elif chain == "square":
        (g,) = b.node("Mul", [y, y])
        t = b.rng.uniform(0.0, 9.0, n)
    elif chain == "tanh_neg":
        (h,) = b.node("Tanh", [y])
        (g,) = b.node("Neg", [h])
        t = b.rng.uniform(-1.0, 1.0, n)
    elif chain == "sigmoid":
        (g,) = b.node("Sigmoid", [y])
        t = b.rng.uniform(0.0, 1.0, n)
    else:  # cubic: y^3 - 4y, +1 on two separate runs where its roots are in range
        (sq,) = b.node("Mul", [y, y])
        (cu,) = b.node("Mul", [sq, y])
        (fy,) = b.node("Mul", [y, b.init("four", np.float32(4))])
        (g,) = b.node("Sub", [cu, fy])
        t = b.rng.uniform(-1.0, 1.0, n)
    tshape = [1] * (rank - 1 - int(b.rng.integers(0, rank))) + [n]  # [n], [1, n], [1, 1, n]
    s = sign(b, g, b.init("t", t.astype(np.float32).reshape(tshape)))
    (z,) = b.node("MatMul", [s, b.init("w2", b.pm1((n, 5)))])
    return z


# -- batch matmul --------------------------------------------------------------------------------

@st.composite
def bmm_case(draw, prefix: str) -> Case:
    b = Builder(prefix, draw(st.integers(0, 2**31 - 1)))
    b.case = case = Case("bmm")
    form = draw(st.sampled_from(["kn", "transposed", "heads", "broadcast", "a_transposed"]))
    m, n_, k = (draw(st.sampled_from([1, 2, 5, 8, 17, 64, 65])) for _ in range(3))
    batch = [draw(st.sampled_from([1, 2, 3]))]
    if form in ("kn", "transposed") and draw(st.booleans()):
        batch.append(draw(st.sampled_from([1, 2, 4])))
    tkind = draw(st.sampled_from(["absent", "scalar", "channel", "computed"]))
    scale = draw(st.booleans())
    case.describe = [f"bmm {form} batch {batch} m{m} n{n_} k{k} threshold {tkind} scale {scale}"]
    if form == "heads":  # x [N, L, h*d] -> heads [N, h, L, d]; K^T through [0, 2, 3, 1]
        heads, d = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 3, 16, 64, 65]))
        case.describe.append(f"heads {heads} d {d}")
        xq, xk = b.input("q", (batch[0], m, heads * d)), b.input("k", (batch[0], n_, heads * d))
        sq = sign(b, xq, threshold(b, xq, tkind, (batch[0], m, heads * d), channel_axis=2))
        sk = sign(b, xk, threshold(b, xk, tkind, (batch[0], n_, heads * d), channel_axis=2))
        (rq,) = b.node("Reshape", [sq, b.init("shape", np.array([batch[0], m, heads, d], np.int64))])
        (rk,) = b.node("Reshape", [sk, b.init("shape", np.array([batch[0], n_, heads, d], np.int64))])
        (q,) = b.node("Transpose", [rq], perm=[0, 2, 1, 3])
        (kt,) = b.node("Transpose", [rk], perm=[0, 2, 3, 1])
        (y,) = b.node("MatMul", [q, kt])
    else:
        a_shape = (*batch, m, k)
        if form == "broadcast":  # A without batch dims, B with: a broadcast MatMul
            a_shape = (m, k)
        if form == "a_transposed":  # A = Transpose(DS(x [.., K, M])): not a sign output, float
            xa = b.input("a", (*batch, k, m))
            st_ = sign(b, xa, threshold(b, xa, tkind, (*batch, k, m), channel_axis=len(batch)))
            (sa,) = b.node("Transpose", [st_], perm=[*range(len(batch)), len(batch) + 1, len(batch)])
        else:
            xa = b.input("a", a_shape)
            sa = sign(b, xa, threshold(b, xa, tkind, a_shape, channel_axis=len(a_shape) - 1))
        if form == "transposed":
            xb = b.input("b", (*batch, n_, k))
            sb = sign(b, xb, threshold(b, xb, tkind, (*batch, n_, k), channel_axis=len(batch) + 1))
            perm = [*range(len(batch)), len(batch) + 1, len(batch)]
            (bt,) = b.node("Transpose", [sb], perm=perm)
        else:
            xb = b.input("b", (*batch, k, n_))
            bt = sign(b, xb, threshold(b, xb, tkind, (*batch, k, n_), channel_axis=len(batch)))
        (y,) = b.node("MatMul", [sa, bt])
    exact = not scale
    if scale:
        (y,) = b.node("Mul", [y, b.init("a", np.float32(0.125))])
    case.outputs.append(y)
    if exact:
        case.exact.add(y)
    return case


@st.composite
def float_conv_case(draw, prefix: str) -> Case:
    b = Builder(prefix, draw(st.integers(0, 2**31 - 1)))
    b.case = case = Case("float_conv")
    n = draw(st.sampled_from([1, 1, 2]))
    c = draw(st.sampled_from([1, 2, 3, 5, 16, 33]))
    k = draw(st.sampled_from([1, 3, 8, 16, 24]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2])))
    pads = [draw(st.integers(0, 3)) for _ in range(4)]
    kh = draw(st.integers(1, max(1, min(7, (h + pads[0] + pads[2] - 1) // dil[0] + 1))))
    kw = draw(st.integers(1, max(1, min(7, (w + pads[1] + pads[3] - 1) // dil[1] + 1))))
    bias = draw(st.booleans())
    binary_after = draw(st.booleans())
    case.describe = [f"float_conv n{n} c{c} k{k} {h}x{w} kernel {kh}x{kw} stride {stride} dil {dil} "
                     f"pads {pads} bias {bias} binary_after {binary_after}"]
    x = b.input("x", (n, c, h, w))
    ins = [x, b.init("w", (b.rng.standard_normal((k, c, kh, kw)) * 0.5).astype(np.float32))]
    if bias:
        ins.append(b.init("b", b.rng.standard_normal(k).astype(np.float32)))
    (y,) = b.node("Conv", ins, kernel_shape=[kh, kw], strides=list(stride), dilations=list(dil),
                  pads=pads)
    case.outputs.append(y)
    if binary_after:  # a sign 0.37 above zero (no ties that depend on summation order)
        s2 = sign(b, y, b.init("t", np.float32(0.37)))
        (z,) = b.node("Conv", [s2, b.init("w", b.pm1((3, k, 1, 1)))], kernel_shape=[1, 1])
        case.outputs.append(z)
    return case


# -- attention -----------------------------------------------------------------------------------

@st.composite
def attention_case(draw, prefix: str) -> Case:
    b = Builder(prefix, draw(st.integers(0, 2**31 - 1)))
    b.case = case = Case("attention")
    scores = draw(st.sampled_from(["float", "binary"]))
    layout = draw(st.sampled_from(["plain", "heads", "rank3"]))  # rank3: [n, M, K], float scores
    fits = draw(st.sampled_from(["yes", "yes", "yes", "other_axis", "broadcast"]))
    n, heads = draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 2, 3]))
    if layout == "rank3":
        scores, heads = "float", 1
    if fits == "broadcast":  # values [n, 1, K, d] against [n, heads, M, K] ([1, K, d] vs [n, M, K])
        heads, n = max(heads, 2), (max(n, 2) if layout == "rank3" else n)
    # 36, 68: rows of whole 4-byte words that are no multiple of a register's chunk (the
    # fused softmax + quantizer's tails)
    m, k = (draw(st.sampled_from([1, 2, 4, 5, 9, 10, 16, 17, 36, 64, 65, 68])) for _ in range(2))
    d = draw(st.sampled_from([1, 3, 16, 17, 64]))
    binary_after = draw(st.booleans())
    case.describe = [f"attention scores {scores} {layout} fits {fits} n{n} heads {heads} m{m} k{k} "
                     f"d{d} binary_after {binary_after}"]
    lead = (n,) if layout == "rank3" else (n, heads)
    if scores == "float":
        s_in = b.input("s", (*lead, m, k), lo=-6, hi=6)
        (s,) = b.node("Mul", [s_in, b.init("alpha", np.float32(0.37))])
    else:  # a transformer's binary Q·Kᵀ over heads of d: x [n, L, h*d] -> [n, h, L, d]
        dq = draw(st.sampled_from([3, 16, 64, 65]))
        case.describe.append(f"q/k head size {dq}")
        signs = []
        for name, length in (("q", m), ("k", k)):
            x = b.input(name, (n, length, heads * dq))
            sx = sign(b, x, threshold(b, x, "scalar", (n, length, heads * dq), channel_axis=2))
            (r,) = b.node("Reshape", [sx, b.init("shape", np.array([n, length, heads, dq], np.int64))])
            signs.append(r)
        (q,) = b.node("Transpose", [signs[0]], perm=[0, 2, 1, 3])
        (kt,) = b.node("Transpose", [signs[1]], perm=[0, 2, 3, 1])
        (qk,) = b.node("MatMul", [q, kt])
        (s,) = b.node("Mul", [qk, b.init("alpha", np.float32(1.0 / np.sqrt(dq)))])
    axis = -1 if fits != "other_axis" else draw(st.sampled_from(list(range(1, len(lead) + 1))))
    (p,) = b.node("Softmax", [s], axis=axis)
    if layout == "heads" and fits != "broadcast":  # values [n, K, h*d] split into heads
        v_in = b.input("v", (n, k, heads * d), lo=-4, hi=4)
        (r,) = b.node("Reshape", [v_in, b.init("shape", np.array([n, k, heads, d], np.int64))])
        (v,) = b.node("Transpose", [r], perm=[0, 2, 1, 3])
    else:
        v_shape = (*lead, k, d)
        if fits == "broadcast":
            v_shape = (1, k, d) if layout == "rank3" else (n, 1, k, d)
        v = b.input("v", v_shape, lo=-4, hi=4)
    (y,) = b.node("MatMul", [p, v])
    mm = case.nodes[-1].name
    (case.quantized if fits == "yes" else case.not_quantized).add(mm)
    if layout == "heads" and fits != "broadcast":  # heads merged back: [n, M, h*d]
        (t,) = b.node("Transpose", [y], perm=[0, 2, 1, 3])
        (y,) = b.node("Reshape", [t, b.init("shape", np.array([n, m, heads * d], np.int64))])
    case.outputs.append(y)
    case.quantized_atol[y] = 3 * 4 / 255  # |v| <= 4
    if binary_after:  # a sign 0.37 above zero and a binary dense reading the product
        s2 = sign(b, y, b.init("t", np.float32(0.37)))
        (z,) = b.node("MatMul", [s2, b.init("w", b.pm1((heads * d if layout == "heads" and fits != "broadcast"
                                                          else d, 5)))])
        case.outputs.append(z)
    return case


CASES = {"conv": conv_case, "dense": dense_case, "bmm": bmm_case, "float_conv": float_conv_case,
         "attention": attention_case}


@st.composite
def models(draw, kinds=tuple(CASES)):
    """A list of 1-3 cases (prefixes c0_, c1_, ...)."""
    picks = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3))
    return [draw(CASES[kind](f"c{i}_")) for i, kind in enumerate(picks)]
