"""One exception hierarchy for everything a user can get wrong.

The CLI catches :class:`BnncompileError` and prints its message on one line with the class's exit
code; anything else is a bug in bnncompile and keeps its traceback.
"""

from __future__ import annotations


class BnncompileError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = 1


class UsageError(BnncompileError):
    """A wrong option value, an unknown model or target name."""

    exit_code = 2


class InputFileError(BnncompileError):
    """A file that is missing, unreadable, truncated or not what it claims to be."""

    exit_code = 3


class CheckpointError(BnncompileError):
    """A checkpoint whose keys or shapes do not match the model."""

    exit_code = 3


class ExportError(BnncompileError):
    """A module the exporter cannot express in ONNX (names the layer)."""

    exit_code = 4


class UnsupportedModelError(BnncompileError):
    """An ONNX graph the compiler cannot lower (names the node)."""

    exit_code = 4


class CompileError(BnncompileError):
    """TVM failed to build the model for the requested target."""

    exit_code = 5


class ParityError(BnncompileError):
    """Validation ran but the compiled model is outside the stated tolerances."""

    exit_code = 6


class Interrupted(BnncompileError):
    """Ctrl-C (130) or SIGTERM (143) stopped the command (bnncompile.cli.interrupts)."""

    exit_code = 130


#: exit code -> what it means (README, ``bnncompile --help``)
EXIT_CODES = {
    0: "success",
    1: "other error",
    2: "usage (a wrong option, model or target name)",
    3: "unreadable or mismatched input file",
    4: "unsupported model (names the node)",
    5: "build failure",
    6: "parity failure (validate, outside tolerances)",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM)",
}


def node_label(node) -> str:
    """``'name' (domain::OpType)`` for error messages about an ONNX node."""
    domain = node.domain or "ai.onnx"
    name = node.name or "<unnamed>"
    return f"'{name}' ({domain}::{node.op_type})"
