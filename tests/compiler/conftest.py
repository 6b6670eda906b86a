"""Fixtures for compiler tests; helper functions live in ``helpers.py``."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """Seeded from the test id: every parametrisation is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
