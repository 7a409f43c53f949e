"""Validation errors in Marathon's wire shape.

Contract: a failed parse raises ``MarathonValidationError`` whose ``details`` is exactly the list
Marathon answers in a 422 body: ``[{"path": "/container/portMappings(0)/hostPort", "errors": ["..."]}]``.
Paths are JSON-pointer-like: object keys are joined with ``/`` (``~`` and ``/`` inside a key are escaped
as in RFC 6901), array indices are written ``(i)``, and whole-object rules use ``/``. Every bad field
is reported, not just the first; all messages for one path are grouped into one entry, in the
order they were found.
"""

from __future__ import annotations

ROOT_PATH = "/"


def json_path_join(parent: str, key: str | int) -> str:
    """Extend a Marathon error path by an object key (``str``) or an array index (``int``)."""
    if isinstance(key, int):
        return f"{parent}({key})"
    escaped_key = key.replace("~", "~0").replace("/", "~1")
    return f"{parent.rstrip('/')}/{escaped_key}"


class MarathonValidationError(Exception):
    """The app definition is not valid; ``details`` lists every bad field with Marathon's paths."""

    message = "Object is not valid"

    def __init__(self, details: list[dict[str, object]]):
        super().__init__(f"{self.message}: {details}")
        self.details = details

    def as_marathon_json(self) -> dict[str, object]:
        """The 422 body Marathon sends."""
        return {"message": self.message, "details": self.details}


class ValidationErrorCollector:
    """Accumulates errors by path while a parser walks a document, then raises them all at once."""

    def __init__(self) -> None:
        self._errors_by_path: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        messages = self._errors_by_path.setdefault(path, [])
        if message not in messages:
            messages.append(message)

    def __bool__(self) -> bool:
        return bool(self._errors_by_path)

    def raise_if_any(self) -> None:
        if self._errors_by_path:
            raise MarathonValidationError(
                [{"path": path, "errors": list(messages)} for path, messages in self._errors_by_path.items()]
            )
