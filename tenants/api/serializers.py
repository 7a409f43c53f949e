"""Serializers validate shape only; rules live in tenants.services."""

from rest_framework import serializers

from tenants.choices import QuotaResource, TenantRole
from tenants.models import ApiToken, AuditEntry, ImageRegistry, Membership, Tenant
from tenants.models.quota import QUOTA_MAXIMUM


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, by name, instead of silently dropping them."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StrictModelSerializer(StrictSerializer, serializers.ModelSerializer):
    pass


class TenantSerializer(StrictModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = ["slug", "name", "created_at", "role"]
        read_only_fields = fields

    def get_role(self, tenant) -> str | None:
        return self.context.get("roles", {}).get(tenant.pk)


class TenantCreateSerializer(StrictSerializer):
    slug = serializers.CharField(max_length=40)
    name = serializers.CharField(max_length=100)
    owner = serializers.CharField(max_length=150, required=False, help_text="username of the first owner")


class MembershipSerializer(StrictModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "created_at"]
        read_only_fields = ["id", "username", "email", "created_at"]


class MembershipCreateSerializer(StrictSerializer):
    username = serializers.CharField(max_length=254, help_text="username or email of an existing user")
    role = serializers.ChoiceField(choices=TenantRole.choices)


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=TenantRole.choices)


def _quota_fields(required: bool) -> dict:
    return {
        r.value: serializers.IntegerField(min_value=0, max_value=QUOTA_MAXIMUM[r], required=required)
        for r in QuotaResource
    }


QuotaLimitsSerializer = type("QuotaLimitsSerializer", (StrictSerializer,), _quota_fields(True))
QuotaLimitsPatchSerializer = type("QuotaLimitsPatchSerializer", (StrictSerializer,), _quota_fields(False))


class QuotaSerializer(serializers.Serializer):
    tenant = serializers.CharField()
    limits = serializers.DictField(child=serializers.IntegerField())
    usage = serializers.DictField(child=serializers.IntegerField())
    over_limit = serializers.ListField(child=serializers.CharField())


class ImageRegistrySerializer(StrictModelSerializer):
    """``password`` is write-only: it is accepted, encrypted, and never returned."""

    password = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=1024,
        style={"input_type": "password"},
        trim_whitespace=False,
    )
    has_password = serializers.BooleanField(read_only=True)
    username = serializers.CharField(required=False, allow_blank=True, max_length=128)
    insecure = serializers.BooleanField(required=False, default=False)

    class Meta:
        model = ImageRegistry
        fields = [
            "id",
            "name",
            "url",
            "username",
            "password",
            "has_password",
            "insecure",
            "created_at",
            "updated_at",
            "last_checked_at",
            "last_check_ok",
            "last_check_message",
        ]
        read_only_fields = ["id", "created_at", "updated_at", "last_checked_at", "last_check_ok", "last_check_message"]
        # Uniqueness is a service rule with a clear message; skip the model's validators.
        validators: list = []


class ApiTokenSerializer(StrictModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "tenant", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class ApiTokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=64)
    tenant = serializers.CharField(max_length=40, required=False, help_text="pin the token to this tenant (slug)")


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="shown once; store it now")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class AuditEntrySerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = AuditEntry
        fields = ["id", "created_at", "actor", "action", "target", "data"]
        read_only_fields = fields
