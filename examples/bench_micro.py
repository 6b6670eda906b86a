"""Micro-benchmarks behind the kernel-level figures of docs/benchmarks.md (1 thread).

    TVM_NUM_THREADS=1 python examples/bench_micro.py            # all sections
    TVM_NUM_THREADS=1 python examples/bench_micro.py peak fconv # some of them

* ``peak``: the core's clock (``bench``'s dependent-imul chain) and its FP32 FMA peak (32
  independent zmm FMA chains, or 8 ymm on AVX2) -- the rooflines the docs compare against;
* ``fconv``: the float stem / shortcut convs (bnncompile's kernel vs ``F.conv2d``), and the
  ResNet stem + max-pool with the conv's output NCHW or channel-blocked (NCHWc);
* ``bitpack``: packing a sign with a per-channel threshold, on the NCHW map and on the
  ``[N, C, 1, H*W]`` view the frontend uses;
* ``epilogue``: a binary 3x3 conv bare (zero padding), with one-padding (no border correction),
  and with ReActNet's fused tail (residual, RPReLU) and the packed second output;
* ``avgpool``: the 2x2 average pools of the downsampling shortcuts, TVM's own (TOPI through the
  float glue, timed as a VM call) vs bnncompile's kernel; bit-identical.

Every kernel is checked against ``schedules/reference.py`` before it is timed (medians of
``time_evaluator`` repeats); machine noise applies as for every figure in the docs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np
import torch
import tvm
from bnncompile.schedules import packing as pk
from bnncompile.schedules import reference as ref
from bnncompile.schedules import stack_scratch

from bnncompile import bench, targets
from bnncompile import schedules as S
from bnncompile.bench.machine import fma_loop_gmacs

SECTIONS = ("peak", "fconv", "bitpack", "epilogue", "avgpool")


def _median_ms(lib, sym, args) -> float:
    return float(np.median(lib.time_evaluator(sym, tvm.cpu(), number=20, repeat=9)(*args).results)) * 1e3


def _build(pf, tgt):
    return tvm.compile(pf, target=tgt, tir_pipeline=stack_scratch.register()).jit(), str(pf.attrs["global_symbol"])


def peak(tgt) -> None:
    """The clock and the FP32 FMA peak the product measures (``bench``'s float roofline)."""
    ghz, how = bench.cpu_ghz()
    lanes = 16 if "avx512f" in targets.cpu_flags() else 8
    print(f"clock {ghz:.2f} GHz {how}; FP32 FMA peak {fma_loop_gmacs():.1f} G MAC/s "
          f"({lanes}-lane vectors, independent chains in registers)")


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


def fconv(tgt) -> None:
    print("float conv                     bnncompile ms  G MAC/s   torch ms")
    cases = [("ResNet stem 7x7 s2 3->64 @224", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
             ("ReActNet-A stem 3x3 s2 3->32", (1, 3, 224, 224), (32, 3, 3, 3), 2, 1),
             ("shortcut 1x1 64->128 @28", (1, 64, 28, 28), (128, 64, 1, 1), 1, 0),
             ("shortcut 1x1 256->512 @7", (1, 256, 7, 7), (512, 256, 1, 1), 1, 0)]
    rng = np.random.default_rng(0)
    for name, xs, ws, s, p in cases:
        x, w = rng.standard_normal(xs).astype("float32"), rng.standard_normal(ws).astype("float32")
        b = rng.standard_normal(ws[0]).astype("float32")
        expect = ref.fconv2d_ref(x, w, stride=s, padding=(p,) * 4, bias=b)
        lib, sym = _build(S.make_fconv2d(xs, ws, stride=s, padding=p, with_bias=True, target=tgt), tgt)
        args = [tvm.runtime.tensor(a) for a in (x, pk.block_conv_weight(w, S.fconv2d_block(tgt)), b)]
        out = tvm.runtime.empty(expect.shape, "float32")
        lib[sym](*args, out)
        np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())
        ms = _median_ms(lib, sym, [*args, out])
        tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
        torch_ms = 1e3 * min(_timed(torch.nn.functional.conv2d, tx, tw, tb, s, p) for _ in range(9))
        print(f"{name:30s} {ms:13.3f} {expect.size * np.prod(ws[1:]) / ms / 1e6:8.1f} {torch_ms:10.3f}")
    stem_pool(tgt, rng)


def stem_pool(tgt, rng) -> None:
    """ResNet stem + 3x3 s2 max-pool: the conv's output NCHW (the pool reads rows) vs NCHWc (the
    conv stores whole channel blocks, the pool reads them and transposes its smaller output)."""
    x = rng.standard_normal((1, 3, 224, 224)).astype("float32")
    w = rng.standard_normal((64, 3, 7, 7)).astype("float32")
    b = rng.standard_normal(64).astype("float32")
    conv = ref.fconv2d_ref(x, w, stride=2, padding=(3,) * 4, bias=b)
    expect = ref.maxpool2d_ref(conv, kernel=3, stride=2, padding=(1,) * 4)
    ob = S.fconv2d_block(tgt)
    print("ResNet stem + max-pool          conv ms   pool ms   total ms")
    for layout in ("NCHW", "NCHWc"):
        mid_shape = conv.shape if layout == "NCHW" else (1, 64 // ob, *conv.shape[2:], ob)
        lc, sc = _build(S.make_fconv2d(x.shape, w.shape, stride=2, padding=3, with_bias=True,
                                       out_layout=layout, target=tgt), tgt)
        lp, sp = _build(S.make_maxpool2d(mid_shape, kernel=3, stride=2, padding=1, target=tgt), tgt)
        args = [tvm.runtime.tensor(a) for a in (x, pk.block_conv_weight(w, ob), b)]
        mid, out = tvm.runtime.empty(mid_shape, "float32"), tvm.runtime.empty(expect.shape, "float32")
        lc[sc](*args, mid)
        lp[sp](mid, out)
        np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())
        tc, tp = _median_ms(lc, sc, [*args, mid]), _median_ms(lp, sp, [mid, out])
        print(f"  conv output {layout:6s} {tc:17.3f} {tp:9.3f} {tc + tp:10.3f}")


def bitpack(tgt) -> None:
    print("bitpack (per-channel threshold)   NCHW map us   [N,C,1,H*W] view us")
    rng = np.random.default_rng(0)
    for c, hw in ((512, 14), (256, 28), (128, 56), (64, 112), (1024, 7)):
        x = rng.standard_normal((1, c, hw, hw)).astype("float32")
        t = rng.standard_normal((1, c, 1, 1)).astype("float32")
        expect = ref.bitpack_ref(x, t)
        times = []
        for shape in ((1, c, hw, hw), (1, c, 1, hw * hw)):
            lib, sym = _build(S.make_bitpack(shape, t.shape, tgt), tgt)
            out = tvm.runtime.empty((1, shape[2], shape[3], (c + 63) // 64), "uint64")
            args = [tvm.runtime.tensor(x.reshape(shape)), tvm.runtime.tensor(t), out]
            lib[sym](*args)
            np.testing.assert_array_equal(out.numpy().reshape(expect.shape), expect)
            times.append(_median_ms(lib, sym, args) * 1e3)
        print(f"{c}x{hw}x{hw}{'':22s} {times[0]:10.1f} {times[1]:18.1f}")


def epilogue(tgt) -> None:
    print("binary 3x3 conv                      bare (zero pad)   one-padding   fused tail + pack   ms")
    rng = np.random.default_rng(0)
    post = ("residual", "shift", "prelu", "shift")
    for c, hw in ((64, 56), (128, 28), (256, 14)):
        x = np.sign(rng.standard_normal((1, c, hw, hw))).astype("float32")
        w = np.sign(rng.standard_normal((c, c, 3, 3))).astype("float32")
        vec = [rng.standard_normal(c).astype("float32") for _ in range(5)]
        res = rng.standard_normal((1, c, hw, hw)).astype("float32")
        row = []
        for pad_value, ops in (("zero", ()), ("one", ()), ("zero", post)):
            pack = bool(ops)
            pf = S.make_bconv2d(x.shape, w.shape, padding=1, pad_value=pad_value, with_scale=True,
                                with_bias=True, post=ops, pack_output=pack, target=tgt)
            lib, sym = _build(pf, tgt)
            post_ref = list(zip(ops, [res, vec[2], vec[3], vec[4]]))
            expect = ref.bconv2d_ref(x, w, padding=1, pad_value=pad_value, scale=vec[0], bias=vec[1],
                                     post=post_ref)
            args = [pk.pack_bits(x, axis=1), pk.pack_conv_weight(w, block=S.weight_block_of(pf))]
            if pk.needs_border_table((1,) * 4, pad_value):
                args.append(pk.conv_border_table(w, (hw, hw), padding=1))
            args += [vec[0], vec[1]] + ([res, vec[2], vec[3], vec[4], np.zeros((1, c, 1, 1), "float32")]
                                        if pack else [])
            args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
            outs = [tvm.runtime.empty(expect.shape, "float32")]
            if pack:
                outs.append(tvm.runtime.empty((1, hw, hw, (c + 63) // 64), "uint64"))
            lib[sym](*args, *outs)
            np.testing.assert_allclose(outs[0].numpy(), expect, rtol=1e-5, atol=1e-3)
            row.append(_median_ms(lib, sym, [*args, *outs]))
        print(f"{c}->{c} @{hw}{'':26s} {row[0]:12.3f} {row[1]:13.3f} {row[2]:19.3f}")


def avgpool(tgt) -> None:
    from tvm import relax

    from bnncompile.compiler import relax_pipeline

    print("avg-pool 2x2 s2                 TVM's pool us   bnncompile us")
    rng = np.random.default_rng(0)
    for c, hw in ((64, 112), (128, 56), (256, 28), (512, 14)):
        x = rng.standard_normal((1, c, hw, hw)).astype("float32")
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                out = bb.emit_output(bb.emit(relax.op.nn.avg_pool2d(xv, pool_size=2, strides=2)))
            bb.emit_func_output(out)
        vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tgt, relax_pipeline=relax_pipeline(tgt),
                                              tir_pipeline=stack_scratch.register()),
                                  tvm.cpu())
        a = tvm.runtime.tensor(x)
        expect = vm["main"](a).numpy()
        lib, sym = _build(S.make_avgpool2d(x.shape, kernel=2, target=tgt), tgt)
        out = tvm.runtime.empty(expect.shape, "float32")
        lib[sym](a, out)
        np.testing.assert_array_equal(out.numpy(), expect)
        tvm_us = float(np.median(vm.time_evaluator("main", tvm.cpu(), number=20, repeat=9)(a).results)) * 1e6
        print(f"{c}@{hw}{'':24s} {tvm_us:12.1f} {_median_ms(lib, sym, [a, out]) * 1e3:15.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    args = ap.parse_args(argv)
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        print(f"bench_micro: unknown section(s) {', '.join(bad)}; expected {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    tgt = targets.tvm_target(targets.resolve("host"))
    print(f"target {tgt}; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
    for name in args.sections or SECTIONS:
        globals()[name](tgt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
