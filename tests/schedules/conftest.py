"""Fixtures of the schedule tests.  The package under test is imported by its installed name
(``bnncompile.schedules``); the kernel harness is loaded from this folder by file path, so nothing
depends on sys.path or on which ``conftest`` module pytest imported last."""
import importlib.util
import pathlib
import sys
import zlib

import numpy as np
import pytest


def _load_harness():
    name = "bnn_kernel_harness"
    if name not in sys.modules:
        path = pathlib.Path(__file__).with_name("kernel_harness.py")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


harness = _load_harness()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "input_kinds(*kinds): restrict the `inputs` parametrisation to these kinds")


def pytest_generate_tests(metafunc):
    """Every test that takes ``inputs`` runs once per input kind (the kind is in its id)."""
    if "inputs" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("input_kinds")
    kinds = list(marker.args) if marker else list(harness.INPUT_KINDS)
    metafunc.parametrize("inputs", kinds, indirect=True)


@pytest.fixture
def inputs(request):
    """The operands of this case (kernel_harness.Inputs); its kind and seed are printed, so a
    failing test shows them under "Captured stdout setup"."""
    inp = harness.Inputs(request.param, request.node.nodeid)
    print(f"{request.node.nodeid}: {inp}")
    return inp


@pytest.fixture(scope="session")
def host():
    return harness.HOST


@pytest.fixture(scope="session")
def run_primfunc():
    return harness.run_primfunc


@pytest.fixture(scope="session")
def run_primfunc_outs():
    return harness.run_primfunc_outs


@pytest.fixture(scope="session")
def staircase_pm1():
    return harness.staircase_pm1


@pytest.fixture
def rng(request):
    # Seeded from the test id: every parametrisation is reproducible on its own.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
