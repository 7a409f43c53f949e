from tenants.models.audit import AuditEntry
from tenants.models.quota import Quota, ResourceClaim
from tenants.models.registry import ImageRegistry
from tenants.models.tenant import Membership, Tenant
from tenants.models.token import ApiToken

__all__ = ["ApiToken", "AuditEntry", "ImageRegistry", "Membership", "Quota", "ResourceClaim", "Tenant"]
