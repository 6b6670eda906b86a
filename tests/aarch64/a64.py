"""Helpers for the aarch64 tests: where the emulator lives, and running a PrimFunc remotely.

The environment is written by ``scripts/setup_aarch64.sh`` into ``<repo>/.aarch64``:
``env.sh`` (sourceable), ``bin/python3`` (aarch64 CPython under qemu-user, with TVM's aarch64
wheels on its path) and ``sysroot`` (QEMU_LD_PREFIX).
"""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
A64_DIR = ROOT / ".aarch64"
ENV_FILE = A64_DIR / "env.sh"
SETUP = "bash scripts/setup_aarch64.sh"
#: the registry's aarch64-neon target (bnncompile.targets.TARGETS["aarch64-neon"].target)
TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
CROSS_CC = "aarch64-linux-gnu-gcc"
_ENV_KEYS = ("BNN_A64_ROOT", "QEMU_LD_PREFIX", "QEMU_CPU", "BNN_A64_PYTHON", "BNN_A64_PYTHONPATH")


@dataclass(frozen=True)
class Emulator:
    python: str  # launcher: qemu-aarch64 + the aarch64 CPython
    env: dict  # QEMU_LD_PREFIX, QEMU_CPU, ... as env.sh exports them


@lru_cache(maxsize=1)
def emulator() -> tuple[Emulator | None, str]:
    """(Emulator, "") when the aarch64 emulation is set up and usable, else (None, skip reason)."""
    if os.environ.get("BNN_SKIP_AARCH64", "") not in ("", "0"):
        return None, "BNN_SKIP_AARCH64=1 is set: aarch64 (qemu-user) tests opted out"
    if platform.machine() != "x86_64":
        return None, ("the aarch64 tests emulate ARM on x86-64; this machine is "
                      f"{platform.machine()} "
                      "(on an aarch64 machine run tests/schedules with the host target)")
    if not ENV_FILE.is_file():
        return None, (f"aarch64 emulator not set up ({ENV_FILE.relative_to(ROOT)} missing): "
                      f"run `{SETUP}` as root")
    if shutil.which("qemu-aarch64") is None:
        return None, f"qemu-aarch64 not on PATH: run `{SETUP}` as root"
    if shutil.which(CROSS_CC) is None:
        return None, f"{CROSS_CC} (cross linker) not on PATH: run `{SETUP}` as root"
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        enabled = handler.read_text().splitlines()[0] == "enabled"
    except OSError:
        enabled = False
    if not enabled:  # lost on reboot; the RPC server re-executes its aarch64 python through it
        return None, ("qemu-aarch64 binfmt_misc handler not registered (after a reboot?): "
                      f"run `{SETUP}` as root")
    try:
        out = subprocess.run(
            ["bash", "-c", '. "$1" >/dev/null && printf "%s\\0" '
             + " ".join(f'"${k}"' for k in _ENV_KEYS), "_", str(ENV_FILE)],
            capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"cannot read {ENV_FILE.relative_to(ROOT)} ({exc}): re-run `{SETUP}`"
    env = dict(zip(_ENV_KEYS, out.split("\0")))
    py = env.get("BNN_A64_PYTHON", "")
    sysroot_python = Path(env.get("QEMU_LD_PREFIX", ""), "usr/bin/python3.11")
    if not py or not os.access(py, os.X_OK) or not sysroot_python.is_file():
        return None, f"aarch64 python missing under {A64_DIR.relative_to(ROOT)}: re-run `{SETUP}`"
    return Emulator(py, env), ""


def child_env(emu: Emulator) -> dict:
    """Environment for a process under qemu: the x86 Python's variables removed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                        "LD_LIBRARY_PATH")}
    env.update({k: v for k, v in emu.env.items() if v})
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, a process group (qemu, the popen worker, session children)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc.poll()
        if not _group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + 10
        while time.time() < deadline:
            proc.poll()
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
    proc.wait()


def session_alive(sess) -> bool:
    """A round trip on the session (a dead socket raises at once)."""
    import tvm

    try:
        tvm.runtime.empty((1,), "int32", sess.cpu(0)).numpy()
        return True
    except Exception:
        return False


class ServerError(RuntimeError):
    pass


class RPCServer:
    """``python -m tvm.exec.rpc_server`` in the aarch64 python under qemu, on 127.0.0.1.

    TVM's server runs **one session at a time** (a second ``rpc.connect`` blocks until the
    first closes), and a session child that dies abnormally (a kernel crashing under qemu) ends
    its accept loop for good.  So everything shares :meth:`session`; when that session is found
    dead, :meth:`recover` restarts the server (tens of seconds) instead of hanging."""

    def __init__(self, emu: Emulator, workdir: Path, start_timeout: float):
        self.emu, self.workdir, self.start_timeout = emu, Path(workdir), start_timeout
        self.host, self.port, self.proc, self.start_seconds = "127.0.0.1", None, None, None
        self.restarts = 0
        self._sess = None

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> None:
        with socket.socket() as s:
            s.bind((self.host, 0))
            base = min(s.getsockname()[1], 65535 - 51)
        t0 = time.perf_counter()
        with open(self.log, "ab") as logf:
            logf.write(f"--- start on ports {base}..{base + 50}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [self.emu.python, "-m", "tvm.exec.rpc_server", "--host", self.host,
                 "--port", str(base), "--port-end", str(base + 50)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                env=child_env(self.emu), start_new_session=True)
        offset = self.log.stat().st_size
        self.port = None
        while time.perf_counter() - t0 < self.start_timeout:
            with open(self.log, "rb") as f:
                f.seek(offset)
                m = re.search(rb"bind to 127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        if self.port is None:
            state = (f"exited with {self.proc.returncode}" if self.proc.poll() is not None
                     else f"not ready after {self.start_timeout:.0f} s (BNN_A64_RPC_START_TIMEOUT)")
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            self.stop()
            raise ServerError(f"aarch64 RPC server {state}; log {self.log}:\n{tail}")
        self.start_seconds = time.perf_counter() - t0

    def stop(self) -> None:
        self._sess = None
        if self.proc is not None:
            kill_group(self.proc)

    def _connect(self, timeout: float = 60):
        from tvm import rpc

        box = {}

        def go():
            try:
                box["sess"] = rpc.connect(self.host, self.port)
            except Exception as exc:  # re-raised below
                box["err"] = exc

        th = threading.Thread(target=go, daemon=True)
        th.start()
        th.join(timeout)
        if "sess" in box:
            return box["sess"]
        why = f"failed: {box['err']}" if "err" in box else f"hung for {timeout:.0f} s"
        raise ServerError(f"rpc.connect to {self.host}:{self.port} {why}")

    def session(self):
        """The shared RPC session; reconnects, or restarts the server, when it is dead."""
        if self._sess is not None and session_alive(self._sess):
            return self._sess
        if self._sess is not None:
            self.recover()
        if self._sess is None:
            self._sess = self._connect()
        return self._sess

    def recover(self) -> None:
        """Restart the server after its session died (its accept loop is gone with it)."""
        self.stop()
        gc.collect()
        self.restarts += 1
        self.start()


class RemoteKernels:
    """Cross-compile PrimFuncs for aarch64-neon, upload once each, run over the shared session.

    A call that kills the session fails its own test; the next call gets a restarted server."""

    def __init__(self, server: RPCServer, workdir: Path):
        self.server = server
        self.workdir = Path(workdir)
        self._sess = None
        self._mods: dict[str, object] = {}

    def module(self, pf):
        import tvm
        from tvm.support import cc

        sess = self.server.session()
        if sess is not self._sess:  # new session: libraries must be loaded again
            self._sess, self._mods = sess, {}
        sym = str(pf.attrs["global_symbol"])
        if sym not in self._mods:
            path = self.workdir / f"{sym}.so"
            if not path.exists():
                tvm.compile(pf, target=tvm.target.Target(TARGET)).export_library(
                    str(path), fcompile=cc.cross_compiler(CROSS_CC))
            sess.upload(str(path))
            self._mods[sym] = sess.load_module(path.name)
        return self._mods[sym][sym]

    def run(self, pf, inputs, out_shapes, out_dtypes):
        """Run ``pf`` on aarch64 with numpy inputs and fresh outputs; returns the outputs."""
        import tvm

        fn = self.module(pf)
        dev = self._sess.cpu(0)
        args = [tvm.runtime.tensor(np.array(a, order="C"), dev) for a in inputs]  # 0-d stays 0-d
        single = isinstance(out_dtypes, str)
        shapes = [out_shapes] if single else out_shapes
        dtypes = [out_dtypes] if single else out_dtypes
        outs = [tvm.runtime.empty(tuple(s), d, dev) for s, d in zip(shapes, dtypes)]
        fn(*args, *outs)
        got = [o.numpy() for o in outs]
        return got[0] if single else got
