"""Issues: problems found in input, reported with where they are and which field is wrong."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Issue:
    """One problem. `object` is "Kind namespace/name"; `location` is "file#doc" or a source name."""

    object: str
    field: str
    message: str
    location: str = ""
    severity: str = "error"  # "error": the object (or part of it) was rejected; "warning": served anyway

    def __str__(self) -> str:
        parts = [p for p in (self.location, self.object) if p]
        head = ": ".join(parts)
        body = f"{self.field}: {self.message}" if self.field else self.message
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{prefix}{head}: {body}" if head else f"{prefix}{body}"
