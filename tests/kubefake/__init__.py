"""In-process fake Kubernetes API server for tests (see ``apiserver.FakeApiServer``)."""

from .apiserver import FakeApiServer, Fault, RecordedRequest
from .resources import DEFAULT_RESOURCES, ResourceType
from .store import ApiError

__all__ = ["DEFAULT_RESOURCES", "ApiError", "FakeApiServer", "Fault", "RecordedRequest", "ResourceType"]
