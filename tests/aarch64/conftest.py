"""aarch64 (NEON) execution under qemu-user: one TVM RPC server per test session.

Every test in this folder is marked ``aarch64`` and SKIPS (never passes silently) when the
emulator is not set up (``bash scripts/setup_aarch64.sh``) or ``BNN_SKIP_AARCH64=1`` is set.
The server runs ``python -m tvm.exec.rpc_server`` in the aarch64 CPython under qemu on
127.0.0.1 (a free port), in its own process group, killed by group at teardown.
"""

from __future__ import annotations

import atexit
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from .a64 import RemoteKernels, RPCServer, ServerError, emulator, kill_group

HERE = Path(__file__).resolve().parent
#: seconds to wait for "bind to" (two `import tvm` under qemu: 45-70 s idle, more when busy)
START_TIMEOUT = float(os.environ.get("BNN_A64_RPC_START_TIMEOUT", "400"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "aarch64: executes aarch64-neon code under qemu-user via a TVM RPC server "
        "(set up: bash scripts/setup_aarch64.sh; opt out: BNN_SKIP_AARCH64=1)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.aarch64)


@pytest.fixture(autouse=True)
def _require_emulator():
    """Skip (with the reason) before any expensive fixture when there is no emulator."""
    emu, why = emulator()
    if emu is None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def rpc_server(tmp_path_factory):
    """The aarch64 RPC server (:class:`a64.RPCServer`), ready once its log says "bind to"."""
    emu, why = emulator()
    if emu is None:
        pytest.skip(why)
    server = RPCServer(emu, tmp_path_factory.mktemp("a64_rpc"), START_TIMEOUT)
    atexit.register(lambda: server.proc is not None and kill_group(server.proc))  # interrupted runs
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\n[aarch64] RPC server under qemu ready on port {server.port} "
          f"in {server.start_seconds:.1f} s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rpc_connect(rpc_server):
    """Session factory: ``rpc_connect()`` -> a live ``tvm.rpc`` session to the aarch64 server.

    TVM's server serves one session at a time, so this hands out the shared session
    (reconnecting, or restarting a server whose session died, when needed)."""
    return rpc_server.session


@pytest.fixture
def remote(rpc_connect):
    """A live RPC session (``remote.upload``, ``remote.load_module``, ``remote.cpu(0)``)."""
    return rpc_connect()


@pytest.fixture(scope="session")
def a64_kernels(rpc_server, tmp_path_factory):
    """:class:`a64.RemoteKernels`: cross-built kernel libraries, cached per symbol."""
    return RemoteKernels(rpc_server, tmp_path_factory.mktemp("a64_kernels"))


@pytest.fixture
def rng(request):
    """Seeded from the test id: every parametrisation is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
