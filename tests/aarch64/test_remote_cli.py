"""The same commands on a board: ``bnncompile run`` and ``validate`` with ``--rpc HOST:PORT``
against the emulated aarch64 board (qemu-user, TVM RPC on loopback), end to end from the
console's point of view (in-process ``main``).

TVM's RPC server serves one session at a time and the session-scoped server of this folder
keeps one open, so this module starts its own server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnncompile.cli.main import main

from .a64 import RPCServer, ServerError, emulator
from .conftest import START_TIMEOUT


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    emu, why = emulator()
    if emu is None:
        pytest.skip(why)
    server = RPCServer(emu, tmp_path_factory.mktemp("cli_rpc"), START_TIMEOUT)
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield f"{server.host}:{server.port}"
    server.stop()


@pytest.fixture(scope="module")
def libs(tmp_path_factory, tiny_onnx):
    """The tiny model compiled for aarch64-neon (cross-linked .so) and for this machine."""
    d = tmp_path_factory.mktemp("cli_libs")
    assert main(["compile", str(tiny_onnx), "-o", str(d / "a64.so"), "-t", "aarch64-neon", "-q"]) == 0
    assert main(["compile", str(tiny_onnx), "-o", str(d / "host.so"), "-q"]) == 0
    return d


def test_run_on_the_board(board, libs, tmp_path, capsys):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(libs / "host.so"), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "h.npy")]) == 0
    assert main(["run", str(libs / "a64.so"), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "a.npy"),
                 "--rpc", board]) == 0
    host, a64 = np.load(tmp_path / "h.npy"), np.load(tmp_path / "a.npy")
    # static thresholds, elementwise float glue: the two builds agree to the last bit
    np.testing.assert_array_equal(a64, host)
    capsys.readouterr()


def test_validate_on_the_board(board, libs, tiny_onnx, capsys):
    code = main(["validate", str(tiny_onnx), "--lib", str(libs / "a64.so"), "--rpc", board, "-q"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("PASS"), out


def test_unreachable_board_is_one_line(libs, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    code = main(["run", str(libs / "a64.so"), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "--rpc", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 5 and "cannot reach --rpc 127.0.0.1:9" in err and "Traceback" not in err


def test_bench_on_the_board(board, libs, tiny_onnx, capsys):
    """bench --rpc times the library on the board (TVM's timer there); nothing else is compared."""
    code = main(["bench", str(tiny_onnx), "--lib", str(libs / "a64.so"), "--rpc", board,
                 "--rounds", "2", "--number", "2"])
    out = capsys.readouterr().out
    assert code == 0 and f"bnncompile@{board}" in out and "not compared" in out, out
