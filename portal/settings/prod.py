"""Production: what the run command serves. DEBUG off (error pages without tracebacks), the
secret key from PORTAL_SECRET_KEY or the state dir's 0600 file (base), cookies Secure when
served over https (PORTAL_HTTPS, default on), and then named __Host-: a browser takes such a
cookie only from the portal's own host over https, Secure, for / and without Domain."""

from .base import *  # noqa: F403
from .base import HTTPS

DEBUG = False
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = False  # TLS ends in front of the portal (a proxy), which redirects
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_NAME = "__Host-sessionid" if HTTPS else "sessionid"
CSRF_COOKIE_NAME = "__Host-csrftoken" if HTTPS else "csrftoken"
