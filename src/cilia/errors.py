"""One error tree for cilia, so callers can catch by stage."""

from __future__ import annotations


class CiliaError(Exception):
    """Base of every error cilia raises on purpose."""


class SourceError(CiliaError):
    """A manifest or API object could not be read or validated."""


class ValidationError(SourceError):
    """An object failed validation; `field` is a dotted path into the object."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TranslationError(CiliaError):
    """An object could not be translated into the neutral model."""


class RenderError(CiliaError):
    """The neutral model could not be rendered into Envoy resources."""


class XdsProtocolError(CiliaError):
    """A proxy spoke xDS in a way the server cannot accept."""


class UnknownProxyRole(XdsProtocolError):
    """The node id names a role cilia does not serve."""
