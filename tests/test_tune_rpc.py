"""Tuning through an RPC tracker + server on loopback (own sessions, killed with killpg)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tune_over_rpc_loopback(tiny_onnx, tmp_path):
    from tvm import rpc

    from bnncompile.tune import tune_model

    tport, sport, key = _free_port(), _free_port(), "bnn-loopback"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tport),
             "--port-end", str(tport + 1)], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tport), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(sport),
             "--port-end", str(sport + 1), "--tracker", f"127.0.0.1:{tport}", "--key", key],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while time.time() < deadline:
            try:
                info = rpc.connect_tracker("127.0.0.1", tport).summary()["server_info"]
                if any(s["key"].endswith(key) for s in info):
                    break
            except Exception:
                pass
            time.sleep(1)
        else:
            pytest.fail("RPC server did not register with the tracker in 60 s")
        res = tune_model(tiny_onnx, trials=2, db_dir=tmp_path / "db", ops=("bdense",),
                         rpc_tracker=f"127.0.0.1:{tport}", rpc_key=key, build_timeout_s=60)
        assert res.trials_run == 2 and res.workloads[0].best_ms is not None
    finally:
        for p in procs[::-1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
