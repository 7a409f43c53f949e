import os

from .base import *  # noqa: F403

DEBUG = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
if not os.environ.get("PORTAL_SECRET_KEY") and not os.environ.get("PORTAL_SECRET_KEY_FILE"):
    raise RuntimeError("prod settings need PORTAL_SECRET_KEY or PORTAL_SECRET_KEY_FILE")
