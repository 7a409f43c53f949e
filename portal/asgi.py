"""One ASGI process serves HTTP (Django) and WebSockets (Channels)."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

# A server started by hand gets production settings (no debug pages); developers opt into dev.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.prod")
# Static files are few and vendored; the portal serves them itself (no CDN, no extra server).
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from portal.public_host import refuse_to_start_if_shared  # noqa: E402

# daphne runs no management command: the portal's own host is checked here, before it serves.
refuse_to_start_if_shared()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from portal.request_limits import RequestBodyLimit  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402
from portal.stream_security import StreamOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(django_asgi_app, max_body_bytes=settings.MAX_REQUEST_BODY_BYTES),
        # The exact origin (scheme, host and port), not only the host: tenants' apps share the host.
        "websocket": StreamOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
