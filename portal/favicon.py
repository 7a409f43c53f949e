"""``/favicon.ico``: browsers ask for it on every page that names no icon (the admin, JSON and
error pages; the portal's own pages name the same file under /static/), and so do many other
clients. It is answered with the vendored icon, not a 404 on every visit."""

from django.contrib.staticfiles import finders
from django.http import FileResponse, Http404
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

ICON = "favicon.ico"


@require_safe
@cache_control(public=True, max_age=86400)
def favicon(request):
    path = finders.find(ICON)
    if path is None:  # a deployment that dropped the static folder
        raise Http404("no icon")
    return FileResponse(open(path, "rb"), content_type="image/x-icon")  # noqa: SIM115 (FileResponse closes it)
