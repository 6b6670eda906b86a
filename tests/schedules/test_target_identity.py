"""One identity per target (schedules.target_identity): the schedule key the registry
dispatches on, the tag tuning records are matched by, the arch a library runs on — the same
answer for the registry, tuning and sidecars."""

from __future__ import annotations

import pytest
from bnncompile.schedules import registry, tuning
from bnncompile.schedules.target_identity import arch_of, identify

from bnncompile import targets

EXPECTED = {  # name -> (arch, schedule key, tag)
    "x86-avx2": ("x86_64", "x86", "llvm-x86_64-haswell"),
    "x86-avx512": ("x86_64", "x86", "llvm-x86_64-icelake-server"),
    "aarch64-neon": ("aarch64", "arm_cpu", "llvm-aarch64-generic+neon"),
    "cuda-sm80": ("cuda", "cuda", "cuda-sm_80"),
    "cuda-sm90": ("cuda", "cuda", "cuda-sm_90"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_targets(name):
    spec = targets.resolve(name)
    ident = spec.identity()
    assert (ident.arch, ident.schedule_key, ident.tag) == EXPECTED[name]
    assert spec.arch == ident.arch == arch_of(spec.target)  # the TVM-free answer agrees
    tgt = targets.tvm_target(spec)
    assert registry.target_key(tgt) == ident.schedule_key


def test_host_identity_names_this_cpu():
    spec = targets.resolve("host")
    ident = spec.identity()
    assert ident.kind == "llvm" and ident.schedule_key in ("x86", "arm_cpu")
    assert spec.target["mcpu"] in ident.tag


@pytest.mark.parametrize("target,key", [
    ({"kind": "llvm"}, "x86"),
    ({"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf"}, "arm_cpu"),
    ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "cpu"),
])
def test_schedule_key_of_raw_targets(target, key):
    assert identify(target).schedule_key == key


def test_tag_ignores_num_cores():
    tgt = targets.tvm_target(targets.resolve("x86-avx2"))
    assert identify(tgt).tag == identify(tuning.tuning_target(tgt, num_cores=7)).tag
    assert identify(tgt).tag != identify({"kind": "llvm", "mcpu": "znver4",
                                          "mtriple": "x86_64-linux-gnu"}).tag
