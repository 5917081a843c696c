"""The runner's errors: what the profiling Job and the workers report and exit
non-zero on."""

from __future__ import annotations


class RunnerError(RuntimeError):
    """A failure with a message meant for the user (no traceback needed)."""
