"""Errors of the eBPF redirect agent."""

from __future__ import annotations

from cilia.errors import CiliaError


class BpfError(CiliaError):
    """A bpf(2)/mount(2) call or a program load failed; `errno` holds the errno when known."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class PolicyError(CiliaError):
    """A redirect policy could not be applied as given (the text names the object and field)."""
