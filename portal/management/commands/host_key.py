"""``manage.py host_key NAME --file PATH``: writes compute host NAME's report key (hex, 0600) to
PATH, the file its worker reads through HYPERVM_HOST_KEY_FILE (portal.services.host_keys). The key
is never printed."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portal.services.host_keys import host_key_file_write
from portal.services.host_sync import host_name_valid


class Command(BaseCommand):
    help = "Write a compute host's report key to a file only its owner can read."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--file", required=True, type=Path)

    def handle(self, *args, name: str, file: Path, **options):
        if not host_name_valid(name):
            raise CommandError(f"{name!r} is not a host name")
        host_key_file_write(name, file)
        self.stdout.write(f"wrote the report key of host {name} to {file}")
