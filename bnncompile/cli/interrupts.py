"""Ctrl-C and SIGTERM stop a command promptly and leave nothing half-written.

Python runs signal handlers only between bytecodes of the main thread, and TVM's FFI turns a
``KeyboardInterrupt`` raised while C++ runs into ``RuntimeError('')`` (a compile could then
finish and exit 0).  So the command line blocks SIGINT and SIGTERM in every thread and waits
for them in one thread of its own, which runs at once whatever the others are doing: it removes
the temporaries of outputs being written (the previous file at each path is untouched: outputs
are renamed into place only when complete), stops child processes (tuning workers, linkers) and
exits with 130 (SIGINT) or 143 (SIGTERM) and one line on stderr.

Only the ``bnncompile`` console script installs this; the library functions never touch signals.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = {signal.SIGINT: ("interrupted (Ctrl-C)", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}

#: what an interrupted command keeps, said in its one-line message (``tune`` keeps its records)
kept = "nothing was written"


def install() -> None:
    """Route SIGINT / SIGTERM to the waiting thread (call before any other thread starts)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
    threading.Thread(target=_wait, name="bnncompile-signals", daemon=True).start()


def _wait() -> None:
    sig = signal.sigwait(set(SIGNALS))
    what, code = SIGNALS[sig]
    from ..artifacts import remove_live_temporaries

    remove_live_temporaries()
    _stop_children()
    try:  # os.write: the main thread may hold sys.stderr's lock (a progress bar)
        os.write(2, f"\nerror: {what}: stopped; {kept}\n".encode())
    finally:
        os._exit(code)


def _stop_children() -> None:
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:  # no psutil, or the process table changed under us
        return
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
