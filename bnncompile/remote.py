"""Running on a board over TVM's RPC: a direct server (``--rpc HOST:PORT``) or a device
registered at a tracker (``--rpc-tracker HOST:PORT --rpc-key KEY``), shared by ``tune``,
``run``, ``validate`` and ``bench``.  Light: TVM's rpc module is imported when connecting."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .errors import CompileError, UsageError


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"Expected {flag} as HOST:PORT, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class Endpoint:
    """Where a remote device is: a server, or a key at a tracker."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    def __post_init__(self):
        if self.rpc is not None and self.tracker is not None:
            raise UsageError("give either --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY, not both")
        if (self.tracker is None) != (self.key is None):
            raise UsageError("--rpc-tracker and --rpc-key must be given together")
        if self.rpc is not None:
            parse_hostport(self.rpc, "--rpc")
        if self.tracker is not None:
            parse_hostport(self.tracker, "--rpc-tracker")

    @classmethod
    def from_flags(cls, rpc=None, tracker=None, key=None) -> Endpoint | None:
        """None when no remote flag was given."""
        if rpc is None and tracker is None and key is None:
            return None
        return cls(rpc, tracker, key)

    def __str__(self) -> str:
        return self.rpc if self.rpc is not None else f"{self.key}@{self.tracker}"

    def connect(self, session_timeout: int = 600, wait: float = 120.0):
        """An RPC session; CompileError naming the endpoint when it cannot be reached, or when
        no session opens within ``wait`` seconds (a TVM server serves one session at a time)."""
        import threading

        from tvm import rpc

        flag, text = ("--rpc", self.rpc) if self.rpc is not None else ("--rpc-tracker", self.tracker)
        host, port = parse_hostport(text, flag)
        _reachable(host, port, flag)
        if self.tracker is not None:
            check_tracker(host, port, self.key)
        box: dict = {}

        def go():
            try:
                box["session"] = (rpc.connect(host, port, session_timeout=session_timeout)
                                  if self.rpc is not None else
                                  rpc.connect_tracker(host, port).request(self.key, session_timeout=session_timeout))
            except Exception as exc:  # tvm raises RuntimeError / TVMError with multi-line text
                box["error"] = exc

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        thread.join(wait)
        if "session" in box:
            return box["session"]
        if "error" in box:
            exc = box["error"]
            raise CompileError(f"{flag} {text}: the RPC session failed: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
        raise CompileError(f"{flag} {text}: no RPC session within {wait:.0f} s (the server serves one "
                           "session at a time: is another client connected?)")


def _reachable(host: str, port: int, flag: str, timeout: float = 5.0) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise CompileError(f"cannot reach {flag} {host}:{port}: {exc.strerror or exc}") from exc


def check_tracker(host: str, port: int, key: str, timeout: float = 5.0) -> None:
    """Fail fast (CompileError, one line) when the tracker is unreachable or serves no ``key``."""
    _reachable(host, port, "RPC tracker", timeout)
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as exc:  # tvm raises RuntimeError/TVMError with multi-line text
        raise CompileError(f"RPC tracker {host}:{port} did not answer: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
    keys = {str(s.get("key", "")).split(":")[-1] for s in summary.get("server_info", [])}
    if key not in keys:
        raise CompileError(f"RPC tracker {host}:{port} has no server with key {key!r} "
                           f"(registered: {', '.join(sorted(keys)) or 'none'})")
