"""Native /api/v1 shapes of the deploy domain (serializers shape only; rules are services)."""

from rest_framework import serializers

from portal.models import App, AppVersion, Deployment, Instance, Network, Volume
from portal.selectors import app_counts, app_definition
from tenants.api.serializers import StrictSerializer


class InstanceSerializer(serializers.ModelSerializer):
    app = serializers.CharField(source="app.marathon_id", read_only=True)
    host = serializers.CharField(source="host.name", read_only=True, default=None)
    version = serializers.CharField(source="version.version", read_only=True)
    task_id = serializers.CharField(read_only=True)

    class Meta:
        model = Instance
        fields = [
            "id",
            "task_id",
            "app",
            "version",
            "status",
            "host",
            "host_ports",
            "ip_address",
            "vcpus",
            "memory_mib",
            "exit_code",
            "oom_killed",
            "failure_reason",
            "phase_times",
            "timings_s",
            "health",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class NetworkSerializer(serializers.ModelSerializer):
    addresses_in_use = serializers.IntegerField(read_only=True)

    class Meta:
        model = Network
        fields = ["id", "name", "subnet", "addresses_in_use", "created_at"]
        read_only_fields = fields


class VolumeSerializer(serializers.ModelSerializer):
    app = serializers.CharField(source="app_marathon_id", read_only=True)
    host = serializers.CharField(source="host.name", read_only=True, default=None)
    persistence_id = serializers.CharField(read_only=True)

    class Meta:
        model = Volume
        fields = [
            "id",
            "app",
            "slot",
            "container_path",
            "size_mib",
            "used_bytes",
            "host",
            "instance",
            "state",
            "persistence_id",
            "created_at",
        ]
        read_only_fields = fields


class AppSerializer(serializers.ModelSerializer):
    version = serializers.CharField(source="current_version.version", read_only=True)
    definition = serializers.SerializerMethodField()
    counts = serializers.SerializerMethodField()

    class Meta:
        model = App
        fields = [
            "id",
            "marathon_id",
            "version",
            "definition",
            "counts",
            "created_at",
            "last_scaling_at",
            "last_config_change_at",
        ]
        read_only_fields = fields

    # A list reads every app's definition and counts at once (AppViewSet.list puts them in the
    # context); a single app reads its own.
    def get_definition(self, app) -> dict:
        definition = self.context.get("definitions", {}).get(app.pk) or app_definition(app)
        return definition.to_marathon_json()

    def get_counts(self, app) -> dict:
        counts = self.context.get("counts", {}).get(app.pk)
        return counts if counts is not None else app_counts(app)


class AppVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = AppVersion
        fields = ["version", "created_at", "definition"]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Deployment
        fields = [
            "id",
            "app_marathon_id",
            "version",
            "kind",
            "status",
            "steps",
            "current_step",
            "progress",
            "failure_reason",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class ScaleSerializer(serializers.Serializer):
    instances = serializers.IntegerField(min_value=0, max_value=10000)
    force = serializers.BooleanField(required=False, default=False)


class ExecRequestSerializer(StrictSerializer):
    """Shape only; the caps (arguments, bytes, timeout) are checked by portal.services.exec."""

    command = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), allow_empty=False
    )
    timeout = serializers.FloatField(required=False, help_text="seconds (default and cap: settings)")


class ExecResultSerializer(serializers.Serializer):
    output = serializers.CharField(help_text="stdout and stderr together, UTF-8 (invalid bytes replaced)")
    exit_code = serializers.IntegerField(allow_null=True, help_text="null when the command timed out or was cut")
    timed_out = serializers.BooleanField()
    truncated = serializers.BooleanField(help_text="the output passed the cap: the command was ended there")
