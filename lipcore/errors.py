"""Errors lipcore raises.

Why separate classes: the CLI and the flows turn an `InputError` into a one-line message and exit code 2
(or a `failed` catalog row), while a `Refused` inside a variant becomes a `refused` result, not a crash.
"""

from __future__ import annotations


class LipzooError(Exception):
    """Base class of every error lipcore raises on purpose."""


class InputError(LipzooError, ValueError):
    """The model or weight file cannot be bounded (corrupt, NaN/Inf, shape mismatch, unsupported layer).

    The message is one line and names the source and the problem.
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class Refused(LipzooError):
    """A variant declines to compute (missing extra, size limit, unsupported operator, not Lipschitz)."""


class CertificationError(LipzooError):
    """A variant produced multipliers whose certificate (a Cholesky check) does not pass."""


class BudgetExceeded(LipzooError):
    """The per-model time budget ran out inside a computation."""
