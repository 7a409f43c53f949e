"""Settings shared by every environment; every deployment-specific value comes from the
environment (``PORTAL_*``) or from a file whose path comes from the environment."""

import os
from pathlib import Path

from portal import public_host as _public_host
from portal.secrets import read_or_create_secret, read_secret, redis_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
STATE_DIR = Path(os.environ.get("PORTAL_STATE_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get("PORTAL_SECRET_KEY") or read_or_create_secret(
    Path(os.environ.get("PORTAL_SECRET_KEY_FILE", STATE_DIR / "secrets" / "django-secret-key"))
)
DEBUG = False
# The portal's own address, as browsers reach it. Never the host tenants' apps are published on
# (cookies are scoped by host, not port): portal.public_host holds that rule and the start check.
PUBLIC_URL = os.environ.get("PORTAL_PUBLIC_URL", _public_host.DEFAULT_PUBLIC_URL)
try:
    _public = _public_host.public_url_parse(PUBLIC_URL)
except ValueError:  # the system check (portal.E003) says what is wrong, at start
    _public = None
PUBLIC_ORIGIN = _public.origin if _public else None
# Where host workers publish apps (vmworker.tasks reads the same variable).
APP_PUBLISH_HOST_IP = os.environ.get("HYPERVM_PUBLISH_HOST_IP", _public_host.DEFAULT_APP_PUBLISH_HOST_IP)
ALLOWED_HOSTS = [
    h for h in os.environ.get("PORTAL_ALLOWED_HOSTS", _public.host_header if _public else "").split(",") if h
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tenants",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.tenant_switcher",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PORTAL_DB_NAME", "hypervm"),
        "USER": os.environ.get("PORTAL_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("PORTAL_DB_PASSWORD", ""),
        "HOST": os.environ.get("PORTAL_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("PORTAL_DB_PORT", "5432"),
        "CONN_MAX_AGE": 0,
        "TEST": {"NAME": os.environ.get("PORTAL_TEST_DB_NAME")},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis (Celery broker + Channels layer): the project's own instance, which scripts/setup starts
# on its own port with a password (the machine's shared 6379 has none); every checkout on the
# machine shares it, each environment on its own database number. The password only from its
# 0600 file; PORTAL_REDIS_URL (with the password in it) replaces all of this.
REDIS_HOST = os.environ.get("PORTAL_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PORTAL_REDIS_PORT", "6390"))
REDIS_DB = int(os.environ.get("PORTAL_REDIS_DB", "0"))
REDIS_PASSWORD_FILE = Path(os.environ.get("PORTAL_REDIS_PASSWORD_FILE", "/etc/hypervm/redis-password"))
REDIS_URL = os.environ.get("PORTAL_REDIS_URL") or redis_url(
    host=REDIS_HOST,
    port=REDIS_PORT,
    db=REDIS_DB,
    password=read_secret(REDIS_PASSWORD_FILE, made_by="scripts/setup"),
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = STATE_DIR / "staticfiles"

# Registry passwords are encrypted with these keys (MultiFernet: the first encrypts, all
# decrypt, so keys rotate by prepending). Never SECRET_KEY, never the repo.
FERNET_KEYS_FILE = Path(os.environ.get("PORTAL_FERNET_KEYS_FILE", STATE_DIR / "secrets" / "fernet.keys"))
FERNET_KEYS = [k for k in os.environ.get("PORTAL_FERNET_KEYS", "").split(",") if k]

# What compute hosts send is signed with a key per host derived from this master key
# (vmworker.report_signing, portal.services.host_keys; ``manage.py host_key NAME --file F`` gives a
# host its own). PORTAL_HOST_REPORTS_SIGNED=0 takes unsigned reports (a migration window only).
HOST_REPORT_KEY_FILE = Path(
    os.environ.get("PORTAL_HOST_REPORT_KEY_FILE", STATE_DIR / "secrets" / "host-report-master-key")
)
HOST_REPORTS_SIGNED = os.environ.get("PORTAL_HOST_REPORTS_SIGNED", "1") != "0"

# The embedded local registry every tenant may pull from, read-only (tenants.embedded_registry).
# The run command sets these; the password only ever comes from the 0600 file.
EMBEDDED_REGISTRY_URL = os.environ.get("PORTAL_EMBEDDED_REGISTRY_URL", "")
EMBEDDED_REGISTRY_USERNAME = os.environ.get("PORTAL_EMBEDDED_REGISTRY_USERNAME", "")
EMBEDDED_REGISTRY_PASSWORD_FILE = os.environ.get("PORTAL_EMBEDDED_REGISTRY_PASSWORD_FILE", "")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HyperVM CaaS API",
    "DESCRIPTION": "Tenants, quotas, registries, tokens; apps and instances.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

CELERY_BROKER_URL = os.environ.get("PORTAL_CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("PORTAL_CELERY_QUEUE", "portal")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# redis-py 8 reads with a 5 s socket timeout by default, as long as channels_redis's blocking
# BZPOPMIN waits: every idle receive() raised TimeoutError and tore the consumer (and its
# WebSocket) down every 5 s (django/channels_redis#422). Longer than that wait, still bounded.
CHANNELS_REDIS_SOCKET_TIMEOUT_S = 15


def channel_layers_for(url: str) -> dict:
    from vmworker.host_config import redis_retry  # the host's layer reconnects the same way

    host = {"address": url, "socket_timeout": CHANNELS_REDIS_SOCKET_TIMEOUT_S, "retry": redis_retry()}
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host]}}}


CHANNEL_LAYERS = channel_layers_for(os.environ.get("PORTAL_CHANNELS_REDIS_URL", REDIS_URL))

# The registry check talks only to the registry a tenant admin configured; bounded.
REGISTRY_CHECK_TIMEOUT_S = float(os.environ.get("PORTAL_REGISTRY_CHECK_TIMEOUT_S", "5"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("PORTAL_LOG_LEVEL", "INFO")},
}

# Compute hosts and placement.
HOST_HEARTBEAT_INTERVAL_S = float(os.environ.get("PORTAL_HOST_HEARTBEAT_INTERVAL_S", "3"))
HOST_HEARTBEAT_EXPIRY_S = float(os.environ.get("PORTAL_HOST_HEARTBEAT_EXPIRY_S", "15"))
CPU_ALLOCATION_RATIO = float(os.environ.get("PORTAL_CPU_ALLOCATION_RATIO", "8"))
HOST_RESERVED_MEMORY_MIB = int(os.environ.get("PORTAL_HOST_RESERVED_MEMORY_MIB", "1024"))
HOST_PORT_RANGE = (
    int(os.environ.get("PORTAL_HOST_PORT_MIN", "20000")),
    int(os.environ.get("PORTAL_HOST_PORT_MAX", "30000")),
)
# A host port found held by a program outside the platform is skipped by placement this long.
HOST_PORT_BLOCK_S = float(os.environ.get("PORTAL_HOST_PORT_BLOCK_S", "600"))
# How long a host keeps an ended instance's folder (its guest log) before deleting it; the
# portal's database keeps its console tail, failure reason and timings.
HOST_INSTANCE_RETENTION_S = float(os.environ.get("PORTAL_HOST_INSTANCE_RETENTION_S", "3600"))
RECONCILE_INTERVAL_S = float(os.environ.get("PORTAL_RECONCILE_INTERVAL_S", "2"))
GUEST_MIN_MEMORY_MIB = 96  # the guest kernel does not start in less

CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "portal.reconcile", "schedule": RECONCILE_INTERVAL_S, "options": {"expires": 10}},
}

# --- issue 9: auth (login lockout, API throttles, registry address policy)
from datetime import timedelta  # noqa: E402 (kept in this block)

# Failed log-ins (the portal's /login/ and the admin's) lock one username from one client
# address out for a cool-off (django-axes; attempts are rows in PostgreSQL). The client address
# is REMOTE_ADDR: behind a proxy, set AXES_CLIENT_IP_CALLABLE to read the proxy's header.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("PORTAL_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(seconds=float(os.environ.get("PORTAL_LOGIN_COOLOFF_S", "900")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Kept out of the attempt rows (axes always masks the password).
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "csrfmiddlewaretoken"]


def cache_for(url: str) -> dict:
    """The cache (API throttle counters) on Redis: built from the Redis URL, so a password
    or database put in that URL applies here too."""
    return {
        "default": {
            "BACKEND": "portal.shared_redis.ProcessRedisCache",
            "LOCATION": url,
            # Several portals (or test stacks) may share one Redis database.
            "KEY_PREFIX": os.environ.get("PORTAL_CACHE_KEY_PREFIX", "portal"),
        }
    }


CACHES = cache_for(os.environ.get("PORTAL_CACHE_REDIS_URL", REDIS_URL))


def api_throttle_rates(*, anon_default: str, user_default: str) -> dict[str, str]:
    """DRF rates ("N/second|minute|hour|day") per client address (anon) and per user; the
    Marathon /v2 API (events stream included) counts against the same ones."""
    return {
        "anon": os.environ.get("PORTAL_API_THROTTLE_ANON_RATE", anon_default),
        "user": os.environ.get("PORTAL_API_THROTTLE_USER_RATE", user_default),
    }


REST_FRAMEWORK |= {
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    # A Marathon client polling deployments every second and a CI job stay far below these.
    "DEFAULT_THROTTLE_RATES": api_throttle_rates(anon_default="60/minute", user_default="600/minute"),
}

# Registries a tenant adds may not be on loopback, private, link-local, multicast or unspecified
# addresses (the platform's own services), except the embedded registry and these
# "host:port" entries (comma-separated), e.g. a registry the platform runs on its own network.
REGISTRY_HOST_ALLOWLIST = [
    e.strip().lower() for e in os.environ.get("PORTAL_REGISTRY_HOST_ALLOWLIST", "").split(",") if e.strip()
]

# --- issue 9: policy (every value a tenant sends is checked against platform policy)
from dataclasses import fields as _dataclass_fields  # noqa: E402
from urllib.parse import urlsplit as _urlsplit  # noqa: E402

from portal.marathon.platform_policy import PlatformPolicy as _PlatformPolicy  # noqa: E402

# Fixed host ports no tenant may take even inside HOST_PORT_RANGE: the ports the platform itself
# serves on a host (portal, embedded registry, PostgreSQL, Redis) and any listed here (comma list).
RESERVED_HOST_PORTS = frozenset(
    {int(port) for port in os.environ.get("PORTAL_RESERVED_HOST_PORTS", "").replace(" ", "").split(",") if port}
    | {
        int(os.environ.get("PORTAL_PORT") or 8000),
        _urlsplit(EMBEDDED_REGISTRY_URL).port or 5000,
        int(DATABASES["default"]["PORT"] or 5432),
        _urlsplit(REDIS_URL).port or 6379,
    }
    | ({_public.port} if _public else set())
)
# Every cap of an app definition is a setting PORTAL_APP_<NAME> (e.g. PORTAL_APP_MAX_TASK_KILL_GRACE_PERIOD_S);
# the defaults live once, in PlatformPolicy. The id's length is the database column's, not a setting.
APP_DEFINITION_LIMITS = {
    field.name: type(field.default)(os.environ.get(f"PORTAL_APP_{field.name.upper()}", field.default))
    for field in _dataclass_fields(_PlatformPolicy)
    if field.name.startswith("max_") and field.name != "max_app_id_chars"
}
# Request bodies above this are answered 413 before any view runs (portal.request_limits); Django's
# own limit on a parsed body is kept the same so the two never disagree.
MAX_REQUEST_BODY_BYTES = int(os.environ.get("PORTAL_MAX_REQUEST_BODY_BYTES", str(1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

# --- issue 9: ops
# Whether the portal is served over https (prod settings mark the session and CSRF cookies
# Secure then). Default on; the run command turns it off: it serves http on a loopback port,
# where a browser would never send a Secure cookie back and no login could work.
HTTPS = env_bool("PORTAL_HTTPS", True)
# --- issue 9: streams (WebSocket and SSE: exact origin, access re-check, streams per user)
# Origins besides the portal's own that a browser may use the session from, exactly
# "scheme://host[:port]": Django's CSRF check of session POSTs and the stream origin check
# (portal.stream_security) read this one list.
# The public origin is trusted too: behind a proxy the Host the portal sees may be another.
CSRF_TRUSTED_ORIGINS = [
    *([PUBLIC_ORIGIN] if PUBLIC_ORIGIN else []),
    *(origin for origin in os.environ.get("PORTAL_TRUSTED_ORIGINS", "").split(",") if origin),
]
# Cookies stay on the portal's own host: host-only (no Domain, so never sent to another host or
# a subdomain), SameSite=Lax (not sent on other sites' subrequests or POSTs), the session cookie out
# of reach of scripts. The __Host- names (prod, over https) also stop any other host setting them.
SESSION_COOKIE_DOMAIN = None
CSRF_COOKIE_DOMAIN = None
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_HTTPONLY = True
# Open WebSockets + /v2/events streams of one user, across every web process (Redis leases).
MAX_STREAMS_PER_USER = int(os.environ.get("PORTAL_MAX_STREAMS_PER_USER", "16"))
# Every open stream checks its session or token, membership and user again this often.
STREAM_RECHECK_S = float(os.environ.get("PORTAL_STREAM_RECHECK_S", "2"))
# A stream's lease lives this long unless its stream refreshes it (every STREAM_RECHECK_S), so
# the leases of a crashed web process free themselves.
STREAM_LEASE_TTL_S = float(os.environ.get("PORTAL_STREAM_LEASE_TTL_S", "10"))
# The Redis holding the leases; empty: the channel layer's.
STREAM_LEASE_REDIS_URL = os.environ.get("PORTAL_STREAM_LEASE_REDIS_URL", "")
# --- issue 9: images (unpacked size limit; the disk quota claimed by writable layers and images)
# The largest tree one image may unpack to on a host; a pull is also capped by what is left of the
# tenant's disk_mib quota, whichever is smaller (vmworker/images/unpack.py enforces it while unpacking).
IMAGE_MAX_UNPACKED_MIB = int(os.environ.get("PORTAL_IMAGE_MAX_UNPACKED_MIB", "4096"))
# An instance's writable layer when its app definition's `disk` is 0 (Marathon's default): the
# size of the guest's overlay, claimed of the tenant's disk_mib quota per instance.
INSTANCE_DEFAULT_DISK_MIB = int(os.environ.get("PORTAL_INSTANCE_DEFAULT_DISK_MIB", "256"))
# Marathon's cpus as a hard CFS cap in the boot spec (off: shares only, as Mesos by default).
INSTANCE_ENFORCE_CPU_QUOTA = os.environ.get("HYPERVM_ENFORCE_CPU_QUOTA") == "1"
# --- issue 13: metrics (usage samples of instances, the Prometheus /metrics endpoint)
# The Redis keeping each live instance's last CPU/memory samples; empty: the channel layer's.
USAGE_REDIS_URL = os.environ.get("PORTAL_USAGE_REDIS_URL", "")
# How often a host worker measures its guests (vmworker.usage).
USAGE_SAMPLE_INTERVAL_S = float(os.environ.get("PORTAL_USAGE_SAMPLE_INTERVAL_S", "3"))
# /metrics: platform admins' sessions, or this Bearer token (a Prometheus scrape job's
# bearer_token / bearer_token_file). From the environment or a 0600 file; none: sessions only.
METRICS_SCRAPE_TOKEN = os.environ.get("PORTAL_METRICS_SCRAPE_TOKEN", "") or (
    read_secret(Path(os.environ["PORTAL_METRICS_SCRAPE_TOKEN_FILE"]), made_by="the operator")
    if os.environ.get("PORTAL_METRICS_SCRAPE_TOKEN_FILE")
    else ""
)
# Counts API requests (/api/v1/, /v2/) for /metrics; outermost, so throttled and failed ones count.
MIDDLEWARE.insert(0, "portal.metrics.requests.ApiRequestMetricsMiddleware")
# --- issue 13: exec (shells and one-shot commands in a running instance, portal.services.exec)
# One-shot exec (POST .../instances/<id>/exec/): the longest timeout a request may ask for, the one
# it gets when it names none, and the most output returned (the rest is dropped, "truncated": true).
EXEC_MAX_TIMEOUT_S = float(os.environ.get("PORTAL_EXEC_MAX_TIMEOUT_S", "300"))
EXEC_DEFAULT_TIMEOUT_S = float(os.environ.get("PORTAL_EXEC_DEFAULT_TIMEOUT_S", "30"))
# Shells and one-shot commands one tenant may have open on one host (of its 64): the rest stay
# free for the other tenants (vmworker.exec_agent).
EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST = int(os.environ.get("PORTAL_EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST", "16"))
EXEC_MAX_OUTPUT_BYTES = int(os.environ.get("PORTAL_EXEC_MAX_OUTPUT_BYTES", str(1024 * 1024)))
# How long the instance's host may take to open a shell before the client is told it is unavailable.
EXEC_OPEN_TIMEOUT_S = float(os.environ.get("PORTAL_EXEC_OPEN_TIMEOUT_S", "30"))
