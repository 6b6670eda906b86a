"""The lowering plan: which node each converter claims, and what it needs to convert it.

:func:`plan_lowering` runs every converter of the registry it is given
(:data:`bnncompile.frontend.converters.CONVERTERS`) in order; each claims nodes (``ctx.claim``) and
records its decisions in the plan.
Later converters see what earlier ones claimed (the epilogue fusion needs the binary convs,
the fused PReLU statistics need the power means), and a node is claimed at most once.  The plan
also keeps, for every Conv / Gemm / MatMul that is *not* binary, the reason why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import UnsupportedModelError, node_label
from .binary_layers import BinaryLayer
from .epilogue import Epilogue
from .graph import GraphIndex, value_shapes


@dataclass
class PreluStats:
    """``y = Where(d >= 0, d, slope * d) + shift_out``, ``d = x - shift_in`` (DyBNN's DPReLU,
    INSTA's PReLU: shifts and slope per sample and channel) and the ReduceMean nodes over H, W
    of ``y**p`` it computes alongside, as (node name, p)."""

    x: str
    shift_in: str
    slope: str
    shift_out: str
    means: list[tuple[str, int]]
    nodes: list[str]  # Sub, GreaterOrEqual, Mul, Where, Add


@dataclass
class LoweringPlan:
    """What the planning decided, keyed by ONNX node name."""

    #: node name -> name of the converter that claimed it
    claims: dict[str, str] = field(default_factory=dict)
    binary: dict[str, BinaryLayer] = field(default_factory=dict)
    #: Conv / Gemm / MatMul name -> why it stays float
    not_binary: dict[str, str] = field(default_factory=dict)
    #: binary node name -> (scale vector [K] (float32), Mul node name) folded into its epilogue
    folded_scale: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    #: tail node name -> the float chain a binary conv computes in its epilogue
    #: (frontend.epilogue); ``fused_convs`` maps the conv's name to that tail
    epilogues: dict[str, Epilogue] = field(default_factory=dict)
    fused_convs: dict[str, str] = field(default_factory=dict)
    #: ReduceMean node name -> (x, power, keepdims): E[x^p] over H, W in one pass over x
    power_means: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    #: the last node of a threshold MLP over a token mean -> its
    #: :class:`~.converters.token_threshold.TokenMlp` (one kernel)
    token_thresholds: dict[str, object] = field(default_factory=dict)
    #: the last Mul of a GELU such a threshold pools -> the chain's last node (one kernel
    #: computes both: converters.token_threshold.GeluPrologue)
    token_gelus: dict[str, str] = field(default_factory=dict)
    #: ReduceMean of a Slice -> :class:`~.converters.sliced_mean.MeanOfSlice` (a slice of the mean)
    sliced_means: dict[str, object] = field(default_factory=dict)
    #: a dynamic PReLU's last Add -> :class:`PreluStats`
    prelu_stats: dict[str, PreluStats] = field(default_factory=dict)
    #: float convs whose output only a claimed MaxPool reads: written channel-blocked (NCHWc)
    pooled_float_convs: set[str] = field(default_factory=set)
    #: float conv name -> the Relu its epilogue applies (converters.float_conv.FusedRelu)
    relu_float_convs: dict[str, str] = field(default_factory=dict)
    #: DynamicSign output -> layouts its binary consumers asked for ("nchw" | "last")
    sign_layouts: dict[str, set[str]] = field(default_factory=dict)
    #: kernel symbol -> {"layers", "kind", "binary_macs", "float_macs", "calls", ["fused"]};
    #: filled at import, lets bench attribute time per layer and compute achieved rates
    kernels: dict[str, dict] = field(default_factory=dict)
    #: the tuning database session the build used (set by the compiler), else None
    tuning: object | None = None
    #: the DynamicSign outputs ``debug_signs`` returns after the model outputs (in this order)
    debug_signs: list[str] = field(default_factory=list)
    #: the canonical model the plan describes (set by ``from_onnx``) and its own outputs
    canonical: onnx.ModelProto | None = None
    outputs: list[str] = field(default_factory=list)
    #: the float convs' arithmetic ("fp32", or "int16" / "int8": schedules.quantize), and each
    #: quantized conv's levels {node: {"qa", "qw"}} (filled at import)
    conv_precision: str = "fp32"
    quantized_convs: dict[str, dict] = field(default_factory=dict)
    #: attention's probability x value products on int8 (``--attention-precision int8``):
    #: {node: {"p_levels", "v_levels"}} (filled at import)
    quantized_matmuls: dict[str, dict] = field(default_factory=dict)
    #: such a product's MatMul -> the Softmax it computes in its own kernel (that Softmax's
    #: only reader, fast math): the probabilities never exist as a float tensor
    fused_softmaxes: dict[str, str] = field(default_factory=dict)
    #: Softmax over binary scores -> the batch matmul that computes them (converters.score_softmax);
    #: ``count_scores``: such a matmul -> (k, alpha) where it wrote popcounts (filled at import)
    score_softmaxes: dict[str, str] = field(default_factory=dict)
    count_scores: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    #: binary dense -> :class:`~.converters.count_threshold.CountCut` (its sums decide one
    #: DynamicSign through an elementwise chain); ``cut_signs``: that sign's output -> the dense
    count_thresholds: dict[str, object] = field(default_factory=dict)
    cut_signs: dict[str, str] = field(default_factory=dict)
    #: binary dense -> :class:`~.converters.dense_epilogue.DenseTail` (the bias and residual
    #: Adds its epilogue computes)
    dense_tails: dict[str, object] = field(default_factory=dict)
    #: ONNX Sign nodes compiled as 0 -> +1 (canonicalize.SignZeroSite)
    sign_zero_sites: list = field(default_factory=list)

    def claimed(self, converter_name: str) -> set[str]:
        return {n for n, c in self.claims.items() if c == converter_name}

    @property
    def float_convs(self) -> set[str]:
        return self.claimed("FloatConv")

    @property
    def max_pools(self) -> set[str]:
        return self.claimed("MaxPool")

    @property
    def avg_pools(self) -> set[str]:
        return self.claimed("AveragePool")

    @property
    def sign_layout(self) -> dict[str, str]:
        """DynamicSign output -> "nchw" | "last", for signs whose binary consumers agree (one
        pack kernel per sign, shared by all consumers)."""
        return {k: next(iter(v)) for k, v in self.sign_layouts.items() if len(v) == 1}


@dataclass
class PlanContext:
    """What a converter's ``plan`` sees."""

    model: onnx.ModelProto
    index: GraphIndex
    plan: LoweringPlan
    #: switches a converter may require: "binary_kernels", "cpu", "fuse_epilogues",
    #: "attention_int8", "fast_math", "table_lookup"
    switches: frozenset[str]
    #: tensors that must stay materialised (graph outputs, debug outputs): fusions end there
    keep: set[str]
    _shapes: dict | None = None

    @property
    def shapes(self) -> dict:
        if self._shapes is None:
            self._shapes = value_shapes(self.model)
        return self._shapes

    def claim(self, node: onnx.NodeProto | str, converter) -> None:
        name = node if isinstance(node, str) else node.name
        owner = self.plan.claims.get(name)
        if owner is not None and owner != converter.name:
            raise UnsupportedModelError(f"node '{name}' is claimed by both {owner} and "
                                        f"{converter.name} (a bnncompile bug; please report it)")
        self.plan.claims[name] = converter.name

    def is_claimed(self, node: onnx.NodeProto | str) -> bool:
        return (node if isinstance(node, str) else node.name) in self.plan.claims

    def node(self, name: str) -> onnx.NodeProto:
        return self._by_name[name]

    def __post_init__(self):
        self._by_name = {n.name: n for n in self.model.graph.node}


def plan_lowering(model: onnx.ModelProto, index: GraphIndex, converters, *, switches,
                  keep=frozenset()) -> LoweringPlan:
    """Run every converter's ``plan`` in registry order; converters whose ``requires`` are not
    all in ``switches`` are skipped."""
    ctx = PlanContext(model, index, LoweringPlan(), frozenset(switches),
                      set(keep) | {o.name for o in model.graph.output})
    for conv in converters:
        if conv.requires <= ctx.switches:
            conv.plan(ctx)
    return ctx.plan


def only_read_by(index: GraphIndex, tensor: str, readers: set[str], keep: set[str]) -> bool:
    """``tensor`` has one consumer, one of ``readers``, and is not kept."""
    consumers = index.consumers.get(tensor, [])
    return tensor not in keep and len(consumers) == 1 and consumers[0].name in readers


def require_constant(index: GraphIndex, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
    """Input ``i`` of ``node`` as a constant (None if absent); an error naming the node if it is
    present but computed."""
    if len(node.input) <= i or not node.input[i]:
        return None
    value = index.constant(node.input[i])
    if value is None:
        raise UnsupportedModelError(f"node {node_label(node)}: {what} must be a constant")
    return value
