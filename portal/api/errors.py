"""Turns domain errors into clear 4xx answers: a field error reads like DRF's own
validation errors ({field: [message]}) so clients handle one shape."""

from django.db import IntegrityError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.access import RoleRequired
from tenants.errors import DomainError, QuotaExceeded


def exception_handler(exc, context):
    if isinstance(exc, QuotaExceeded):
        return Response(
            {
                "detail": exc.message,
                "quota": {"resource": exc.resource, "limit": exc.limit, "used": exc.used, "requested": exc.requested},
            },
            status=exc.status_code,
        )
    if isinstance(exc, DomainError):
        body = {exc.field: [exc.message]} if exc.field else {"detail": exc.message}
        return Response(body, status=exc.status_code)
    if isinstance(exc, RoleRequired):
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, IntegrityError):
        return Response({"detail": "This conflicts with existing data."}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)
