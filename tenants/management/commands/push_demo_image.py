"""Pushes the platform's demo image (tenants.demo_image) to the embedded registry: what the run
command does after starting the registry. The registry's credentials come only from an authfile
(containers-auth.json, 0600), never from the command line."""

import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenants.demo_image import push_demo_image
from tenants.oci_build import ImageBuildError


class Command(BaseCommand):
    help = "Build the demo image (busybox httpd) and push it to a registry as demo/hello:latest."

    def add_arguments(self, parser):
        parser.add_argument("--registry", required=True, help="host:port, e.g. 127.0.0.1:5000")
        parser.add_argument("--authfile", type=Path, required=True, help="containers-auth.json for that registry")
        parser.add_argument("--cache-dir", type=Path, default=None, help="where built layouts are kept")
        parser.add_argument("--tls-verify", action="store_true", help="the registry serves verified TLS")

    def handle(self, *args, **options):
        cache_dir = options["cache_dir"] or Path(settings.STATE_DIR) / "oci-build-cache"
        try:
            pushed = push_demo_image(
                registry=options["registry"],
                authfile=options["authfile"],
                cache_dir=cache_dir,
                tls_verify=options["tls_verify"],
            )
        except (ImageBuildError, subprocess.TimeoutExpired, OSError) as error:
            raise CommandError(f"pushing the demo image failed: {error}") from error
        self.stdout.write(f"{pushed.reference} {pushed.manifest_digest}")
