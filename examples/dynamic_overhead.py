"""Where the latency of input-dependent thresholds goes: ablations of a dynamic zoo model.

For a dynamic zoo model (default ``dybnn_reactnet_a``) this exports, compiles for the host and
times in interleaved rounds (1 thread, batch 1):

* ``static``     its static twin (``reactnet_a`` / ``reactnet_18``): the 0 % line;
* ``full``       the model as is;
* ``no-pools``   every ReduceMean over H, W replaced by a 1x1 ``Slice`` (threshold statistics free);
* ``no-dprelu``  every dynamic PReLU (DyBNN's DPReLU, INSTA's PReLU) bypassed, its pool and MLP
  dead: what the dynamic *signs* alone cost;

and for DyBinaryCCT (a graph with Erf nodes) instead of those two

* ``no-gelu``    every GELU (``x * 0.5 * (1 + Erf(x / sqrt 2))``) bypassed: what the MLP's GELU
  costs, which the static twin never computes (its GELU sign is decided on the dense's sums,
  ``converters.count_threshold``) while DySign's threshold pools the GELU's output.

The ablated graphs compute different numbers: they are for timing only.  They rely on the zoo's
node names (module paths: ``<block>.act<i>/Sub`` ... ``/Add_2``) and the exporter's GELU.

    .venv/bin/python examples/dynamic_overhead.py [--model dybnn_reactnet_a] [--rounds 9]
    .venv/bin/python examples/dynamic_overhead.py --model dybinary_cct_7_3x1 \
        --conv-precision int8 --attention-precision int8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnncompile import zoo
from bnncompile.compiler import compile_model
from bnncompile.errors import BnncompileError
from bnncompile.exporter import export_zoo_model
from bnncompile.runtime import load


def no_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceMean over (2, 3) → Slice [0:1, 0:1] of the same tensor (Squeeze if keepdims=0)."""
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                          (("abl_starts", [0, 0]), ("abl_ends", [1, 1]), ("abl_axes", [2, 3]))])
    nodes = []
    for n in g.node:
        if n.op_type != "ReduceMean":
            nodes.append(n)
            continue
        keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        out = n.output[0] if keep else n.output[0] + "_abl"
        nodes.append(helper.make_node("Slice", [n.input[0], "abl_starts", "abl_ends", "abl_axes"],
                                      [out], name=n.name))
        if not keep:
            nodes.append(helper.make_node("Squeeze", [out, "abl_axes"], [n.output[0]], name=n.name + "_sq"))
    del g.node[:]
    g.node.extend(nodes)
    return model


def no_dprelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Consumers of each dynamic PReLU's output read its input instead; dead nodes are dropped."""
    g = model.graph
    by_name = {n.name: n for n in g.node}
    rename = {}
    for n in g.node:
        module, _, op = n.name.rpartition("/")
        if n.op_type == "Add" and op == "Add_2" and ".act" in module and module + "/Sub" in by_name:
            rename[n.output[0]] = by_name[module + "/Sub"].input[0]
    return _bypass(model, rename)


def no_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Consumers of each GELU's output read its input ``x`` instead: from each Erf, follow the only
    readers (Add 1, Mul 0.5) to the Mul that multiplies by ``x`` itself."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    rename = {}
    for erf in (n for n in g.node if n.op_type == "Erf"):
        x = producer[erf.input[0]].input[0]  # Div(x, sqrt 2)
        node = erf
        while len(readers.get(node.output[0], [])) == 1:
            node = readers[node.output[0]][0]
            if node.op_type == "Mul" and x in node.input:
                rename[node.output[0]] = x
                break
    return _bypass(model, rename)


def _bypass(model: onnx.ModelProto, rename: dict[str, str]) -> onnx.ModelProto:
    """Readers of each tensor in ``rename`` read its value instead; dead nodes are dropped."""
    g = model.graph
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    alive = {o.name for o in g.output}
    kept = []
    for n in reversed(list(g.node)):  # the graph is topologically sorted
        if any(o in alive for o in n.output):
            kept.append(n)
            alive.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    return model


def ablations(model: onnx.ModelProto) -> dict:
    """The ablations that apply: DyBinaryCCT's GELU, or the CNNs' pools and dynamic PReLUs."""
    if any(n.op_type == "Erf" for n in model.graph.node):
        return {"no-gelu": no_gelu}
    return {"no-pools": no_pools, "no-dprelu": no_dprelu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dybnn_reactnet_a")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--conv-precision", default="fp32", choices=["fp32", "int16", "int8"])
    ap.add_argument("--attention-precision", default="fp32", choices=["fp32", "int8"])
    args = ap.parse_args()
    options = dict(conv_precision=args.conv_precision, attention_precision=args.attention_precision)
    try:
        spec = zoo.get_spec(args.model)
    except BnncompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not spec.is_dynamic:
        print(f"{args.model} has static thresholds; pick a dynamic model", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_zoo_model(spec.static_twin, tmp / "static.onnx")
        export_zoo_model(args.model, tmp / "full.onnx")
        variants = {"static": tmp / "static.onnx", "full": tmp / "full.onnx"}
        full = onnx.load(tmp / "full.onnx")
        for name, fn in ablations(full).items():
            copy = onnx.ModelProto()
            copy.CopyFrom(full)  # each ablation rewrites the graph in place
            onnx.save(fn(copy), tmp / f"{name}.onnx")
            variants[name] = tmp / f"{name}.onnx"
        runners = {}
        for name, path in variants.items():
            print(f"compiling {name} ...", flush=True)
            # the ablated graphs are timing-only: no parity check against ONNX Runtime
            runners[name] = load(compile_model(path, output=tmp / f"{name}.so", verify=name in ("static", "full"),
                                               **options).library)
        x = np.random.default_rng(0).standard_normal(runners["full"].inputs[0]["shape"]).astype(np.float32)
        times = {name: [] for name in runners}
        for r in runners.values():
            r(x)
        for _ in range(args.rounds):
            for name, r in runners.items():
                t0 = time.perf_counter()
                for _ in range(args.number):
                    r(x)
                times[name].append((time.perf_counter() - t0) / args.number * 1e3)
    base = float(np.median(times["static"]))
    print(f"{args.model} vs {spec.static_twin}: 1 thread, batch 1, {args.rounds} interleaved rounds, "
          f"convs {args.conv_precision}, attention {args.attention_precision}")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"  {name:10s} {med:8.3f} ms  {100 * (med / base - 1):+6.1f} % vs static")
    return 0


if __name__ == "__main__":
    sys.exit(main())
