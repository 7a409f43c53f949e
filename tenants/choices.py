from django.db import models


class TenantRole(models.TextChoices):
    """Roles ordered by power; RANK lets a check say "at least developer"."""

    VIEWER = "viewer", "Viewer"
    DEVELOPER = "developer", "Developer"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"


ROLE_RANK = {
    TenantRole.VIEWER: 10,
    TenantRole.DEVELOPER: 20,
    TenantRole.ADMIN: 30,
    TenantRole.OWNER: 40,
}


def role_at_least(role: str | None, minimum: str) -> bool:
    return role is not None and ROLE_RANK[TenantRole(role)] >= ROLE_RANK[TenantRole(minimum)]


class QuotaResource(models.TextChoices):
    VCPUS = "vcpus", "vCPUs"
    MEMORY_MIB = "memory_mib", "Memory (MiB)"
    DISK_MIB = "disk_mib", "Disk (MiB)"
    INSTANCES = "instances", "Instances"
    VOLUMES = "volumes", "Volumes"
    NETWORKS = "networks", "Networks"
    PUBLISHED_PORTS = "published_ports", "Published ports"


class AuditAction(models.TextChoices):
    TENANT_CREATE = "tenant.create"
    MEMBER_ADD = "member.add"
    MEMBER_ROLE_CHANGE = "member.role_change"
    MEMBER_REMOVE = "member.remove"
    QUOTA_UPDATE = "quota.update"
    REGISTRY_CREATE = "registry.create"
    REGISTRY_UPDATE = "registry.update"
    REGISTRY_DELETE = "registry.delete"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    EXEC_SHELL = "exec.shell"
    EXEC_RUN = "exec.run"
