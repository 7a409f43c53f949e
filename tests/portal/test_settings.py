"""The settings modules as each environment loads them: a fresh interpreter per case, with only
the environment the case gives (a settings module is read once per process)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "s3cret/with:odd@chars"
PRINT_SETTINGS = """
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
print(json.dumps({name: getattr(module, name) for name in sys.argv[2:]}, default=str))
"""


@pytest.fixture
def environment(tmp_path) -> dict[str, str]:
    """What scripts/setup leaves: a state dir, the Redis password in its 0600 file."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(REDIS_PASSWORD + "\n")
    password_file.chmod(0o600)
    (tmp_path / "var").mkdir(mode=0o700)
    return {
        "PATH": os.environ["PATH"],
        "PORTAL_STATE_DIR": str(tmp_path / "var"),
        "PORTAL_REDIS_PORT": "6390",
        "PORTAL_REDIS_PASSWORD_FILE": str(password_file),
    }


def load(module: str, environment: dict[str, str], *names: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS, module, *names],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    return json.loads(result.stdout)


def test_redis_url_is_the_projects_instance_with_the_password_from_its_file(environment):
    loaded = load("portal.settings.base", environment, "REDIS_URL", "CELERY_BROKER_URL", "CHANNEL_LAYERS")

    expected = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6390/0"
    assert loaded["REDIS_URL"] == expected
    assert loaded["CELERY_BROKER_URL"] == expected
    assert loaded["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"][0]["address"] == expected


def test_redis_url_from_the_environment_wins(environment):
    loaded = load(
        "portal.settings.base", environment | {"PORTAL_REDIS_URL": "redis://:pw@10.0.0.5:6400/3"}, "REDIS_URL"
    )

    assert loaded["REDIS_URL"] == "redis://:pw@10.0.0.5:6400/3"


def test_a_missing_redis_password_file_is_a_clear_error(environment, tmp_path):
    with pytest.raises(RuntimeError, match="ImproperlyConfigured: .*redis-password.*scripts/setup"):
        load(
            "portal.settings.base", environment | {"PORTAL_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password.gone")}
        )


def test_a_redis_password_file_other_users_can_read_is_refused(environment):
    Path(environment["PORTAL_REDIS_PASSWORD_FILE"]).chmod(0o644)

    with pytest.raises(RuntimeError, match="ImproperlyConfigured: .*redis-password.*0o644"):
        load("portal.settings.base", environment)


def test_tests_use_another_database_of_the_same_instance(environment):
    loaded = load("portal.settings.test", environment, "CELERY_BROKER_URL", "CHANNEL_LAYERS")

    expected = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:6390/1"
    assert loaded["CELERY_BROKER_URL"] == expected
    assert loaded["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"][0]["address"] == expected


def test_the_test_redis_database_is_a_setting_and_the_test_url_still_overrides(environment):
    by_number = load("portal.settings.test", environment | {"PORTAL_TEST_REDIS_DB": "9"}, "CELERY_BROKER_URL")
    by_url = load(
        "portal.settings.test",
        environment | {"PORTAL_TEST_REDIS_URL": "redis://:x@127.0.0.1:6390/4"},
        "CELERY_BROKER_URL",
    )

    assert by_number["CELERY_BROKER_URL"].endswith("@127.0.0.1:6390/9")
    assert by_url["CELERY_BROKER_URL"] == "redis://:x@127.0.0.1:6390/4"


def test_prod_serves_https_cookies_by_default(environment):
    loaded = load("portal.settings.prod", environment, "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")

    assert loaded == {"DEBUG": False, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True}


def test_prod_over_plain_http_sends_cookies_a_browser_returns(environment):
    loaded = load(
        "portal.settings.prod",
        environment | {"PORTAL_HTTPS": "0"},
        "DEBUG",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
    )

    assert loaded == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_SSL_REDIRECT": False,
    }


def test_prod_takes_the_secret_key_from_the_state_dirs_private_file(environment):
    key_file = Path(environment["PORTAL_STATE_DIR"]) / "secrets" / "django-secret-key"

    loaded = load("portal.settings.prod", environment, "SECRET_KEY")

    assert loaded["SECRET_KEY"] == key_file.read_text().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert oct(key_file.parent.stat().st_mode & 0o777) == "0o700"


def test_prod_refuses_a_secret_key_file_other_users_can_read(environment):
    key_file = Path(environment["PORTAL_STATE_DIR"]) / "secrets" / "django-secret-key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text("k" * 50)
    key_file.chmod(0o644)

    with pytest.raises(RuntimeError, match="ImproperlyConfigured: .*django-secret-key.*0o644"):
        load("portal.settings.prod", environment)


def test_dev_settings_stay_for_developers_who_ask(environment):
    loaded = load("portal.settings.dev", environment, "DEBUG")

    assert loaded["DEBUG"] is True


def test_the_portal_serves_on_a_host_of_its_own_by_default(environment):
    loaded = load("portal.settings.base", environment, "PUBLIC_URL", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS")

    assert loaded == {
        "PUBLIC_URL": "http://127.0.0.2:8000",
        "ALLOWED_HOSTS": ["127.0.0.2"],
        "CSRF_TRUSTED_ORIGINS": ["http://127.0.0.2:8000"],
    }


def test_hosts_origins_and_reserved_ports_follow_the_public_url(environment):
    names = ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "RESERVED_HOST_PORTS")
    loaded = load("portal.settings.base", environment | {"PORTAL_PUBLIC_URL": "https://Portal.Example.test/"}, *names)

    assert loaded["ALLOWED_HOSTS"] == ["portal.example.test"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://portal.example.test"]
    assert re.search(r"\b443\b", loaded["RESERVED_HOST_PORTS"]), loaded["RESERVED_HOST_PORTS"]


def test_cookies_are_host_only_lax_and_named_host_over_https(environment):
    names = ("SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME", "SESSION_COOKIE_DOMAIN", "CSRF_COOKIE_DOMAIN")
    names += ("SESSION_COOKIE_SAMESITE", "CSRF_COOKIE_SAMESITE", "SESSION_COOKIE_HTTPONLY")
    over_https = load("portal.settings.prod", environment, *names)
    over_http = load("portal.settings.prod", environment | {"PORTAL_HTTPS": "0"}, *names)

    common = {"SESSION_COOKIE_DOMAIN": None, "CSRF_COOKIE_DOMAIN": None, "SESSION_COOKIE_HTTPONLY": True}
    common |= {"SESSION_COOKIE_SAMESITE": "Lax", "CSRF_COOKIE_SAMESITE": "Lax"}
    assert over_https == common | {"SESSION_COOKIE_NAME": "__Host-sessionid", "CSRF_COOKIE_NAME": "__Host-csrftoken"}
    # A __Host- cookie must be Secure: over plain http the browser would drop it.
    assert over_http == common | {"SESSION_COOKIE_NAME": "sessionid", "CSRF_COOKIE_NAME": "csrftoken"}


def test_the_metrics_scrape_token_comes_from_the_environment_or_a_private_file(environment, tmp_path):
    token_file = tmp_path / "scrape-token"
    token_file.write_text("from-the-file\n")
    token_file.chmod(0o600)

    none = load("portal.settings.base", environment, "METRICS_SCRAPE_TOKEN")
    given = load("portal.settings.base", environment | {"PORTAL_METRICS_SCRAPE_TOKEN": "given"}, "METRICS_SCRAPE_TOKEN")
    from_file = environment | {"PORTAL_METRICS_SCRAPE_TOKEN_FILE": str(token_file)}
    read = load("portal.settings.base", from_file, "METRICS_SCRAPE_TOKEN")
    token_file.chmod(0o644)
    with pytest.raises(RuntimeError, match="readable by other users"):
        load("portal.settings.base", from_file, "METRICS_SCRAPE_TOKEN")

    assert (none, given, read) == (
        {"METRICS_SCRAPE_TOKEN": ""},
        {"METRICS_SCRAPE_TOKEN": "given"},
        {"METRICS_SCRAPE_TOKEN": "from-the-file"},
    )
