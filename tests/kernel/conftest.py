"""Fixtures for the kernel tests (helpers live in bpf_kernel_support, a uniquely named module)."""

from bpf_kernel_support import kenv

__all__ = ["kenv"]
