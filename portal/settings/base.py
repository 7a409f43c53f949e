"""Settings shared by every environment; every deployment-specific value comes from the
environment (``PORTAL_*``) or from a file whose path comes from the environment."""

import os
from pathlib import Path

from portal.secrets import read_or_create_secret

BASE_DIR = Path(__file__).resolve().parent.parent.parent
STATE_DIR = Path(os.environ.get("PORTAL_STATE_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get("PORTAL_SECRET_KEY") or read_or_create_secret(
    Path(os.environ.get("PORTAL_SECRET_KEY_FILE", STATE_DIR / "secrets" / "django-secret-key"))
)
DEBUG = False
ALLOWED_HOSTS = [h for h in os.environ.get("PORTAL_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

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

REDIS_URL = os.environ.get("PORTAL_REDIS_URL", "redis://127.0.0.1:6379/0")

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
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": CHANNELS_REDIS_SOCKET_TIMEOUT_S}]},
        }
    }


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
