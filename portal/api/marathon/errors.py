"""Errors of the Marathon-compatible API, in Marathon's wire shape.

Contract: every error answer is ``application/json`` with ``{"message": ...}``; a validation
failure adds ``details`` (``[{"path", "errors"}]``), a locked app adds ``deployments``
(``[{"id"}]``). Domain errors from the services keep the status they carry; nothing here
decides business rules, it only translates. Exceptions it does not know are not swallowed:
they are bugs, and a 500 is the honest answer to a bug.
"""

from __future__ import annotations

import math

from django.http import JsonResponse
from rest_framework.exceptions import AuthenticationFailed, Throttled

from portal.marathon import MarathonValidationError
from tenants.access import RoleRequired, TenantNotFound
from tenants.errors import DomainError, InvalidInput


class MarathonApiError(Exception):
    """An answer decided by the API layer itself (bad query, unknown resource, bad method)."""

    def __init__(self, status: int, message: str, **extra: object):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def invalid_json(reason: str) -> MarathonApiError:
    return MarathonApiError(400, "Invalid JSON", details=[{"path": "/", "errors": [reason]}])


def app_not_found(app_id: str) -> MarathonApiError:
    return MarathonApiError(404, f"App '{app_id}' does not exist")


def task_not_found(task_id: str) -> MarathonApiError:
    return MarathonApiError(404, f"Task '{task_id}' does not exist")


def marathon_error_body(exc: Exception) -> tuple[int, dict[str, object]] | None:
    """(status, body) for an exception the API answers as a 4xx; None for anything else."""
    if isinstance(exc, MarathonApiError):
        return exc.status, {"message": exc.message, **exc.extra}
    if isinstance(exc, MarathonValidationError):
        return 422, exc.as_marathon_json()
    if isinstance(exc, InvalidInput) and exc.field and exc.field.startswith("/"):
        # A service refusing one field of the definition (a Marathon path): same shape as the parser's.
        return 422, {
            "message": MarathonValidationError.message,
            "details": [{"path": exc.field, "errors": [exc.message]}],
        }
    if isinstance(exc, DomainError):
        body: dict[str, object] = {"message": exc.message}
        deployment_ids = getattr(exc, "deployment_ids", None)
        if deployment_ids is not None:  # AppLocked: clients show which deployments block the app
            body["deployments"] = [{"id": str(deployment_id)} for deployment_id in deployment_ids]
        return exc.status_code, body
    if isinstance(exc, RoleRequired):
        return 403, {"message": str(exc)}
    if isinstance(exc, TenantNotFound):
        # The tenant came from the caller's own token or session, so this is not an id probe:
        # the caller lost access to it.
        return 403, {"message": "The tenant of this token is not accessible to its user any more."}
    if isinstance(exc, AuthenticationFailed):
        return 401, {"message": str(exc.detail)}
    if isinstance(exc, Throttled):
        return 429, {"message": str(exc.detail)}
    return None


def marathon_error_response(exc: Exception) -> JsonResponse | None:
    answer = marathon_error_body(exc)
    if answer is None:
        return None
    status, body = answer
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Token"
    if isinstance(exc, Throttled):
        response["Retry-After"] = str(math.ceil(exc.wait or 1))
    return response
