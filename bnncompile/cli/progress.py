"""Stage progress for long commands: a tqdm bar on stderr that names the current stage."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def stages(total: int, desc: str, enabled: bool = True):
    """Yield a ``say(message)`` callable that advances a bar of ``total`` stages."""
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, pipes, tests)
    bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=None if enabled else True, leave=False,
               bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]")

    def say(message: str) -> None:
        bar.set_postfix_str(message)
        if bar.n < total:
            bar.update(1)

    try:
        yield say
    finally:
        bar.close()
