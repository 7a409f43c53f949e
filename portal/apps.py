from django.apps import AppConfig
from django.core import checks


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "HyperVM portal"

    def ready(self):
        from portal.public_host import check_public_host

        checks.register(check_public_host, checks.Tags.security)
