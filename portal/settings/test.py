import os

from .base import *  # noqa: F403
from .base import REDIS_URL, channel_layers_for

# Tests use their own Redis database so a running dev portal is not disturbed.
# PORTAL_TEST_REDIS_DB picks another database of the same instance; PORTAL_TEST_REDIS_URL any URL.
TEST_REDIS_DB = int(os.environ.get("PORTAL_TEST_REDIS_DB", "1"))
_TEST_REDIS_URL = os.environ.get("PORTAL_TEST_REDIS_URL") or f"{REDIS_URL.rsplit('/', 1)[0]}/{TEST_REDIS_DB}"
CELERY_BROKER_URL = _TEST_REDIS_URL
CHANNEL_LAYERS = channel_layers_for(_TEST_REDIS_URL)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- issue 9: auth. The cache (API throttle counters) on the tests' Redis database, and rates
# no ordinary test reaches; tests of the throttle start a stack with low rates in its env.
from .base import REST_FRAMEWORK, api_throttle_rates, cache_for  # noqa: E402

CACHES = cache_for(_TEST_REDIS_URL)
REST_FRAMEWORK = REST_FRAMEWORK | {
    "DEFAULT_THROTTLE_RATES": api_throttle_rates(anon_default="100000/minute", user_default="100000/minute")
}

# --- issue 9: image registries. Unit tests name images on 127.0.0.1:5000, where the run command
# serves the embedded registry; the platform vouches for it there as it does for the embedded one.
REGISTRY_HOST_ALLOWLIST = sorted({*REGISTRY_HOST_ALLOWLIST, "127.0.0.1:5000"})  # noqa: F405
