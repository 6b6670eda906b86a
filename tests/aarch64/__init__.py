"""Tests that execute aarch64 (NEON) code under qemu-user through a TVM RPC server.

Set up once with ``bash scripts/setup_aarch64.sh`` (root); skipped otherwise, or with
``BNN_SKIP_AARCH64=1``.
"""
