"""Option groups several subcommands share."""

from __future__ import annotations

import click


def remote_options(f):
    """``--rpc`` / ``--rpc-tracker`` + ``--rpc-key``: run the library on a board through TVM's
    RPC instead of on this machine."""
    f = click.option("--rpc-key", default=None, metavar="KEY", help="device key at the RPC tracker")(f)
    f = click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
                     help="run on a device registered at this TVM RPC tracker (with --rpc-key)")(f)
    f = click.option("--rpc", default=None, metavar="HOST:PORT",
                     help="run on the board serving TVM RPC at HOST:PORT "
                          "(python -m tvm.exec.rpc_server on the board)")(f)
    return f


def endpoint(rpc, rpc_tracker, rpc_key):
    from ..remote import Endpoint

    return Endpoint.from_flags(rpc, rpc_tracker, rpc_key)
