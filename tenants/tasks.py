import logging

from celery import shared_task
from django.conf import settings

from tenants.embedded_registry import platform_registry_hosts
from tenants.models import ImageRegistry
from tenants.registry_check import DEADLINE_TIMEOUTS, registry_check
from tenants.services import registry_check_record

logger = logging.getLogger(__name__)


# The check ends itself within DEADLINE_TIMEOUTS read timeouts; the hard limit is the backstop
# that frees the shared worker whatever happens inside it.
@shared_task(
    name="tenants.check_registry",
    acks_late=True,
    time_limit=DEADLINE_TIMEOUTS * settings.REGISTRY_CHECK_TIMEOUT_S + 10,
)
def check_registry(registry_id: int) -> bool:
    """Takes an id only: the password is read and decrypted here, never sent through the broker."""
    registry = ImageRegistry.objects.filter(pk=registry_id).first()
    if registry is None:
        return False
    result = registry_check(
        url=registry.url,
        username=registry.username,
        password=registry.pull_password(),
        insecure=registry.insecure,
        timeout_s=settings.REGISTRY_CHECK_TIMEOUT_S,
        allowed=platform_registry_hosts(),
    )
    registry_check_record(registry_id=registry_id, ok=result.ok, message=result.message)
    logger.info("registry.checked", extra={"registry_id": registry_id, "ok": result.ok})
    return result.ok
