"""Larq -> tf2onnx fixtures.

Environment used (a venv of its own; never the project's .venv):
    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install --upgrade pip
    /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras larq larq-zoo tf2onnx onnxruntime onnx
        # pip resolves larq 0.12.2 / larq-zoo 2.3.1 there (larq-zoo 2.4.0 pins
        # protobuf<3.21, which TF 2.21 cannot use), so then:
    /tmp/tfenv/bin/pip install larq==0.14.0
    /tmp/tfenv/bin/pip install --no-deps larq-zoo==2.4.0
  resolved to: tensorflow(-cpu) 2.21.0, tf_keras 2.21.0, larq 0.14.0, larq-zoo 2.4.0
  (zookeeper 1.3.3, tensorflow-datasets 4.6.0), tf2onnx 1.17.0, onnx 1.23.2,
  onnxruntime 1.32.0, protobuf 7.36.2, numpy 1.26.4 (~4.5 min, venv 2.3 GB).

Rerun (from the repository root):
    TF_USE_LEGACY_KERAS=1 PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \
        /tmp/tfenv/bin/python tests/interop/make_fixtures/make_larq_fixtures.py [--out DIR]
  (the script sets both variables itself if they are missing.)
  PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python is needed only because `import larq_zoo`
  pulls zookeeper -> tensorflow_datasets 4.6 -> tensorflow_metadata protos generated for
  protobuf 3.x ("Descriptors cannot be created directly" with protobuf 7's upb backend).

Fixtures (NHWC input kept: tf2onnx is run WITHOUT --inputs-as-nchw; batch dim dynamic):
  larq_docs_cnn   (a) larq-docs style CNN on 16x16x1: QuantConv2D(ste_sign/ste_sign/weight_clip)
                      with pad_values=1.0 ("same"), a "same" conv with default pad_values=0,
                      a "valid" conv, BatchNormalization(scale=False) after each, MaxPool
                      between conv and BN, Flatten, two QuantDense. Deviation from the docs:
                      the FIRST conv also has input_quantizer="ste_sign" (so the raw input's
                      exact zeros hit sign(0)); no final softmax (logits compared).
  larq_quicknet   (b) larq_zoo.sota.QuickNetFactory(section_blocks=(2, 2),
                      section_filters=(16, 32)), 32x32x3, 10 classes, random weights;
                      the final softmax is cut off (output = Dense logits).
  larq_birealnet  (b) larq_zoo.literature.BiRealNetFactory(filters=8), 64x64x3, 10 classes,
                      random weights (approx_sign inputs, magnitude_aware_sign kernels);
                      the final softmax is cut off (output = Dense logits).
Every model gets random, seeded BN statistics (so BN is not an identity).
`<name>.npz`: `inputs` (NHWC float32, with exact zeros), `outputs` (Keras model output),
`ort_outputs` (ONNX Runtime on the .onnx).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse

import larq as lq
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures"))


def docs_cnn():
    kw = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)
    m = tf.keras.models.Sequential(name="larq_docs_cnn")
    m.add(tf.keras.Input(shape=(16, 16, 1), name="input"))
    m.add(lq.layers.QuantConv2D(16, (3, 3), padding="same", pad_values=1.0, **kw))
    m.add(tf.keras.layers.BatchNormalization(scale=False))
    m.add(lq.layers.QuantConv2D(32, (3, 3), padding="same", **kw))  # pad_values=0.0 (default)
    m.add(tf.keras.layers.MaxPooling2D((2, 2)))
    m.add(tf.keras.layers.BatchNormalization(scale=False))
    m.add(lq.layers.QuantConv2D(32, (3, 3), padding="valid", **kw))
    m.add(tf.keras.layers.BatchNormalization(scale=False))
    m.add(tf.keras.layers.Flatten())
    m.add(lq.layers.QuantDense(64, **kw))
    m.add(tf.keras.layers.BatchNormalization(scale=False))
    m.add(lq.layers.QuantDense(10, **kw))
    m.add(tf.keras.layers.BatchNormalization(scale=False))
    return m


def strip_softmax(model):
    """larq_zoo tops end in Activation("softmax"); with random weights it saturates to
    one-hot, which makes a useless reference, so the fixture ends at the logits."""
    last = model.layers[-1]
    assert isinstance(last, tf.keras.layers.Activation) and last.get_config()["activation"] == "softmax"
    return tf.keras.Model(model.inputs, model.layers[-2].output, name=model.name)


def quicknet():
    from larq_zoo.sota.quicknet import QuickNetFactory

    return strip_softmax(QuickNetFactory(section_blocks=(2, 2), section_filters=(16, 32), input_shape=(32, 32, 3),
                                         weights=None, include_top=True, num_classes=10).build())


def birealnet():
    from larq_zoo.literature.birealnet import BiRealNetFactory

    return strip_softmax(BiRealNetFactory(filters=8, input_shape=(64, 64, 3), weights=None, include_top=True,
                                          num_classes=10).build())


def randomise_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            new = []
            for w, v in zip(layer.weights, layer.get_weights()):
                n = w.name.split("/")[-1]
                if n.startswith("gamma"):
                    v = (rng.standard_normal(v.shape) * 0.5 + 1.0)
                elif n.startswith("beta"):
                    v = rng.standard_normal(v.shape) * 0.3
                elif n.startswith("moving_mean"):
                    v = rng.standard_normal(v.shape) * 0.5
                elif n.startswith("moving_variance"):
                    v = rng.random(v.shape) * 2 + 0.5
                new.append(v.astype(np.float32))
            layer.set_weights(new)


def make_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.15] = 0.0  # exact zeros -> sign(0)
    x.reshape(-1)[:3] = 0.0
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    print("tf", tf.__version__, "keras", tf.keras.__name__ if hasattr(tf.keras, "__name__") else "?",
          "tf2onnx", tf2onnx.__version__)
    specs = {
        "larq_docs_cnn": (docs_cnn, (4, 16, 16, 1)),
        "larq_quicknet": (quicknet, (4, 32, 32, 3)),
        "larq_birealnet": (birealnet, (4, 64, 64, 3)),
    }
    for i, (name, (builder, shape)) in enumerate(specs.items()):
        model = builder()
        randomise_bn(model, rng)
        x = make_inputs(shape, 300 + i)
        ref = model(x, training=False).numpy()
        path = os.path.join(args.out, f"{name}.onnx")
        spec = [tf.TensorSpec((None,) + shape[1:], tf.float32, name="input")]
        tf2onnx.convert.from_keras(model, input_signature=spec, output_path=path)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.savez(os.path.join(args.out, f"{name}.npz"), inputs=x, outputs=ref, ort_outputs=out)
        print(f"{name}: {os.path.getsize(path)} B  ir={m.ir_version} opsets={[(o.domain, o.version) for o in m.opset_import]} "
              f"params={model.count_params()}  max|ORT-keras|={np.abs(out - ref).max():.3g}  "
              f"max|keras|={np.abs(ref).max():.3g}")


if __name__ == "__main__":
    main()
