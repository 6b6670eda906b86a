"""DynamicSign: forward contract, broadcasting, STE backward, ONNX body, checker, verify_node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from bnncompile.custom_ops import dynamic_sign as ds
from onnx import helper

from bnncompile.errors import UnsupportedModelError


def sign(x, t=None, ste="approx"):
    return ds.binarize(x, t, ste=ste)


def test_forward_ties_nan_and_signed_zero():
    x = torch.tensor([-1.0, -0.0, 0.0, 1e-45, -1e-45, 2.0, float("nan"), float("inf"), -float("inf")])
    y = sign(x.reshape(1, -1))
    # x >= 0: -0.0 >= 0 is True (IEEE), NaN compares false -> -1
    assert y.flatten().tolist() == [-1, 1, 1, 1, -1, 1, -1, 1, -1]
    t = torch.tensor(0.5)
    y = sign(torch.tensor([[0.5, 0.49999997, 0.50000006]]), t)
    assert y.flatten().tolist() == [1, -1, 1]  # a value equal to its threshold gives +1
    assert y.dtype == torch.float32


@pytest.mark.parametrize("x_shape,t_shape", [
    ((2, 3, 4, 5), (2, 3, 1, 1)), ((2, 3, 4, 5), (1, 3, 1, 1)), ((2, 7, 6), (2, 1, 6)),
    ((2, 3, 4, 5), ()), ((2, 7, 6), (6,)),
])
def test_broadcast_matches_reference(x_shape, t_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g)
    t = torch.randn(t_shape, generator=g)
    x.view(-1)[::7] = t.expand(x_shape).reshape(-1)[::7]  # exact ties
    y = sign(x, t)
    assert y.shape == x.shape
    np.testing.assert_array_equal(y.numpy(), ds.reference(x.numpy(), t.numpy()))


@pytest.mark.parametrize("ste", ["approx", "clipped"])
def test_backward_matches_analytic_formula(ste):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 4, 4, generator=g) * 1.2).requires_grad_()
    t = (torch.randn(2, 3, 1, 1, generator=g) * 0.3).requires_grad_()
    up = torch.randn(2, 3, 4, 4, generator=g)
    (sign(x, t, ste) * up).sum().backward()
    d = (x - t).detach()
    if ste == "approx":
        deriv = torch.clamp(2 - 2 * d.abs(), min=0)
    else:
        deriv = (d.abs() <= 1).float()
    torch.testing.assert_close(x.grad, up * deriv, rtol=0, atol=1e-6)
    # threshold gradient: minus the sum over the broadcast (H, W) dimensions
    torch.testing.assert_close(t.grad, -(up * deriv).sum(dim=(2, 3), keepdim=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t_shape", [(1, 3, 1, 1), (), (4,)])
def test_threshold_grad_summed_over_broadcast_dims(t_shape):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 3, 5, 4, generator=g) * 0.5).requires_grad_()
    t = (torch.randn(t_shape, generator=g) * 0.1).requires_grad_()
    sign(x, t).sum().backward()
    d = (x - t).detach()
    expect = -torch.clamp(2 - 2 * d.abs(), min=0)
    lead = expect.dim() - len(t_shape)
    expect = expect.sum(dim=tuple(range(lead))) if lead else expect
    dims = tuple(i for i, s in enumerate(t_shape) if s == 1)
    expect = expect.sum(dim=dims, keepdim=True) if dims else expect
    assert t.grad.shape == t.shape
    torch.testing.assert_close(t.grad, expect.reshape(t_shape), rtol=1e-5, atol=1e-4)


def _body_model(x_shape, t_shape):
    node = helper.make_node(ds.OP_TYPE, ["X", "T"], ["Y"], domain=ds.DOMAIN, name="sign0")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, list(x_shape)),
         helper.make_tensor_value_info("T", onnx.TensorProto.FLOAT, list(t_shape))],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, list(x_shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ds.BODY_OPSET)])
    model.ir_version = 10
    return ds.attach_function(model)


@pytest.mark.parametrize("x_shape,t_shape", [((2, 3, 4, 5), (2, 3, 1, 1)), ((2, 7, 6), (2, 1, 6)),
                                             ((3, 5), ())])
def test_onnx_function_body_in_onnxruntime_is_bit_exact(x_shape, t_shape):
    import onnxruntime as ort

    model = _body_model(x_shape, t_shape)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    t = rng.standard_normal(t_shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[::5] = np.broadcast_to(t, x_shape).reshape(-1)[::5]  # ties
    flat[1] = np.nan
    flat[2] = -0.0
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"X": x, "T": t})
    np.testing.assert_array_equal(y, ds.reference(x, t))
    assert set(np.unique(y)) <= {-1.0, 1.0}


def test_exported_model_passes_full_check(exported_small):
    model = onnx.load(str(exported_small.model_path))
    onnx.checker.check_model(model, full_check=True)
    assert any(f.domain == ds.DOMAIN and f.name == ds.OP_TYPE for f in model.functions)


@pytest.mark.parametrize("node", [
    helper.make_node("Relu", ["X"], ["Y"]),
    helper.make_node(ds.OP_TYPE, [], ["Y"], domain=ds.DOMAIN),
    helper.make_node(ds.OP_TYPE, ["X", "T", "Z"], ["Y"], domain=ds.DOMAIN),
    helper.make_node(ds.OP_TYPE, ["X"], ["Y", "Z"], domain=ds.DOMAIN),
    helper.make_node(ds.OP_TYPE, ["X"], ["Y"], domain=ds.DOMAIN, alpha=1.0),
])
def test_verify_node_raises_naming_the_node(node):
    node.name = "bad_node"
    with pytest.raises(UnsupportedModelError, match="bad_node"):
        ds.verify_node(node)


def test_verify_node_accepts_good_nodes():
    ds.verify_node(helper.make_node(ds.OP_TYPE, ["X", "T"], ["Y"], domain=ds.DOMAIN))
    ds.verify_node(helper.make_node(ds.OP_TYPE, ["X"], ["Y"], domain=ds.DOMAIN))


def test_infer_shape_rejects_non_broadcastable():
    assert ds.infer_shape((2, 3, 4, 4), (2, 3, 1, 1)) == (2, 3, 4, 4)
    with pytest.raises(ValueError):
        ds.infer_shape((2, 3, 4, 4), (2, 5, 1, 1))
