"""``/metrics``: the platform's figures in Prometheus' text format (OpenMetrics when asked).

Who may read it: a platform admin's session, or a scraper sending ``Authorization: Bearer
<token>`` with the token set by PORTAL_METRICS_SCRAPE_TOKEN or the 0600 file
PORTAL_METRICS_SCRAPE_TOKEN_FILE (compared in constant time). No credentials or a wrong token:
401; a signed-in user who is not a platform admin: 403. The figures span every tenant, so no
tenant role reaches them.

Marathon clients call ``GET /metrics`` too (marathon-python's ``get_metrics``) with their API
token (``Authorization: Token …`` or ``token=…``): those get Marathon's JSON for their tenant
(portal.api.marathon.views.MetricsView), as before."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder

from portal.api.marathon.views import MetricsView
from portal.metrics.collector import metrics_registry

_marathon_metrics = MetricsView.as_view()


def _unauthorized(message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _refusal(request) -> HttpResponse | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = settings.METRICS_SCRAPE_TOKEN
        if token and hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return None
        return _unauthorized("Wrong scrape token.")
    if not request.user.is_authenticated:
        return _unauthorized("Sign in as a platform admin or send a scrape token.")
    if not request.user.is_staff:
        return HttpResponse("Platform admins only.\n", status=403, content_type="text/plain")
    return None


@require_safe
@gzip_page
def metrics(request):
    if request.headers.get("Authorization", "").strip()[:6].lower() in ("token ", "token="):
        return _marathon_metrics(request)
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(metrics_registry()), content_type=content_type)
