"""Domain errors raised by services. Interfaces (API, forms, tasks) translate them; each
carries the HTTP status a request gets and, where it is about one input, the field."""


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    status_code = 400


class PolicyViolation(DomainError):
    """Well-formed input that platform policy refuses (an address the platform keeps to itself,
    a credential that would go somewhere it was not entered for)."""

    status_code = 422


class Conflict(DomainError):
    status_code = 409


class PermissionDenied(DomainError):
    status_code = 403


class QuotaExceeded(DomainError):
    status_code = 403

    def __init__(self, *, resource: str, limit: int, used: int, requested: int):
        super().__init__(
            f"Quota exceeded for {resource}: limit {limit}, in use {used}, requested {requested}.",
            field=resource,
        )
        self.resource = resource
        self.limit = limit
        self.used = used
        self.requested = requested
