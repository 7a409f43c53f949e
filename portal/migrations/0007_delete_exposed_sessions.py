"""Every session made before the portal had a host of its own went, as a cookie, to every tenant
app its member visited (cookies are scoped by host, not port): none of them is trusted any more.
Members log in again, on the portal's own host (portal.public_host)."""

from django.db import migrations


def delete_sessions(apps, schema_editor):
    apps.get_model("sessions", "Session").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0006_volumes"),
        ("sessions", "0001_initial"),
    ]

    operations = [migrations.RunPython(delete_sessions, migrations.RunPython.noop)]
