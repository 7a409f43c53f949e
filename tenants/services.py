"""Writes for tenancy: typed, keyword-only; each writes its rows and an audit entry in one
transaction. Callers check roles through tenants.access before calling."""

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.authentication import token_digest
from tenants.choices import AuditAction, QuotaResource, TenantRole
from tenants.crypto import secret_encrypt
from tenants.embedded_registry import platform_registry_hosts
from tenants.errors import Conflict, InvalidInput, PermissionDenied, PolicyViolation, QuotaExceeded
from tenants.models import (
    ApiToken,
    AuditEntry,
    ImageRegistry,
    Membership,
    Quota,
    ResourceClaim,
    Tenant,
)
from tenants.models.quota import QUOTA_MAXIMUM
from tenants.models.tenant import slug_validator
from vmworker.registry_address import AddressRefused, check_registry_host, host_port

logger = logging.getLogger(__name__)
User = get_user_model()


def _audit(*, actor, tenant: Tenant | None, action: str, target: str, data: dict | None = None) -> None:
    AuditEntry.objects.create(
        tenant=tenant,
        actor=actor if actor and actor.is_authenticated else None,
        action=action,
        target=target,
        data=data or {},
    )


# Tenants ---------------------------------------------------------------------------------


@transaction.atomic
def tenant_create(*, actor, slug: str, name: str, owner=None) -> Tenant:
    if not actor.is_staff:
        raise PermissionDenied("Only platform admins create tenants.")
    try:
        slug_validator(slug)
    except Exception as exc:
        raise InvalidInput(" ".join(exc.messages), field="slug") from exc
    if not name.strip():
        raise InvalidInput("A name is required.", field="name")
    if Tenant.objects.filter(slug=slug).exists():
        raise InvalidInput(f"A tenant with slug '{slug}' exists already.", field="slug")
    tenant = Tenant.objects.create(slug=slug, name=name.strip())
    Quota.objects.create(tenant=tenant)
    if owner is not None:
        Membership.objects.create(tenant=tenant, user=owner, role=TenantRole.OWNER)
    _audit(
        actor=actor,
        tenant=tenant,
        action=AuditAction.TENANT_CREATE,
        target=slug,
        data={"owner": owner.username if owner else None},
    )
    logger.info("tenant.created", extra={"tenant_id": tenant.pk})
    return tenant


# Members ---------------------------------------------------------------------------------


def _require_owner_power(*, access, role: str, membership: Membership | None = None) -> None:
    touches_owner = role == TenantRole.OWNER or (membership is not None and membership.role == TenantRole.OWNER)
    if touches_owner and not (access.is_platform_admin or access.role == TenantRole.OWNER):
        raise PermissionDenied("Only an owner can grant, change or remove the owner role.")


def _owners_locked(tenant: Tenant) -> list[Membership]:
    # Locking every owner row serialises concurrent demotions, so two requests can't each
    # see "another owner remains" and together remove the last one.
    return list(Membership.objects.select_for_update().filter(tenant=tenant, role=TenantRole.OWNER))


@transaction.atomic
def membership_add(*, access, username: str, role: str) -> Membership:
    tenant = access.tenant
    if role not in TenantRole.values:
        raise InvalidInput(f"Unknown role '{role}'.", field="role")
    _require_owner_power(access=access, role=role)
    username = (username or "").strip()
    active = User.objects.filter(is_active=True)
    user = (
        active.filter(username=username).first() or active.filter(email__iexact=username).first() if username else None
    )
    if user is None:
        raise InvalidInput(f"No active user '{username}'.", field="username")
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise InvalidInput(f"'{user.username}' is a member already.", field="username")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    _audit(actor=access.actor, tenant=tenant, action=AuditAction.MEMBER_ADD, target=user.username, data={"role": role})
    return membership


@transaction.atomic
def membership_change_role(*, access, membership: Membership, role: str) -> Membership:
    if role not in TenantRole.values:
        raise InvalidInput(f"Unknown role '{role}'.", field="role")
    _require_owner_power(access=access, role=role, membership=membership)
    owners = _owners_locked(membership.tenant)
    membership.refresh_from_db()
    _require_owner_power(access=access, role=role, membership=membership)  # the role may have changed
    if membership.role == TenantRole.OWNER and role != TenantRole.OWNER and len(owners) <= 1:
        raise Conflict("The last owner cannot be demoted; make another member owner first.", field="role")
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    _audit(
        actor=access.actor,
        tenant=membership.tenant,
        action=AuditAction.MEMBER_ROLE_CHANGE,
        target=membership.user.username,
        data={"from": old, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, access, membership: Membership) -> None:
    _require_owner_power(access=access, role=membership.role, membership=membership)
    owners = _owners_locked(membership.tenant)
    membership.refresh_from_db()
    _require_owner_power(access=access, role=membership.role, membership=membership)
    if membership.role == TenantRole.OWNER and len(owners) <= 1:
        raise Conflict("The last owner cannot be removed; make another member owner first.")
    username = membership.user.username
    membership.delete()
    _audit(actor=access.actor, tenant=access.tenant, action=AuditAction.MEMBER_REMOVE, target=username)


# Quotas ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRequest:
    vcpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0
    instances: int = 0
    volumes: int = 0
    networks: int = 0
    published_ports: int = 0


def quota_validate_limits(limits: dict) -> dict[str, int]:
    clean = {}
    for key, value in limits.items():
        if key not in QuotaResource.values:
            raise InvalidInput(f"Unknown quota '{key}'.", field=key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("Must be a whole number.", field=key)
        maximum = QUOTA_MAXIMUM[QuotaResource(key)]
        if value < 0 or value > maximum:
            raise InvalidInput(f"Must be between 0 and {maximum}.", field=key)
        clean[key] = value
    return clean


@transaction.atomic
def quota_update(*, actor, tenant: Tenant, limits: dict) -> Quota:
    """Limits may go below current usage: nothing running is stopped, but every new
    reservation is refused until usage is back under the limit."""
    if not actor.is_staff:
        raise PermissionDenied("Only platform admins set quotas.")
    clean = quota_validate_limits(limits)
    quota = Quota.objects.select_for_update().get(tenant=tenant)
    before = quota.limits()
    for key, value in clean.items():
        setattr(quota, key, value)
    quota.save()
    _audit(
        actor=actor,
        tenant=tenant,
        action=AuditAction.QUOTA_UPDATE,
        target=tenant.slug,
        data={k: {"from": before[k], "to": v} for k, v in clean.items() if before[k] != v},
    )
    return quota


def quota_reserve(*, tenant: Tenant, owner_kind: str, owner_id: str, request: ResourceRequest) -> ResourceClaim:
    """Claim resources for one owner. Must run inside the caller's transaction (the claim
    lives and dies with the thing that owns it); the quota row lock makes concurrent
    reservations of one tenant wait for each other, so none can squeeze past a limit."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("quota_reserve must run inside transaction.atomic()")
    quota = Quota.objects.select_for_update().get(tenant=tenant)
    from tenants.selectors import quota_usage

    usage = quota_usage(tenant=tenant)
    for resource in QuotaResource:
        wanted = getattr(request, resource.value)
        if wanted < 0:
            raise InvalidInput("Cannot request a negative amount.", field=resource.value)
        limit = getattr(quota, resource.value)
        if wanted and usage[resource.value] + wanted > limit:
            raise QuotaExceeded(resource=resource.value, limit=limit, used=usage[resource.value], requested=wanted)
    try:
        with transaction.atomic():
            return ResourceClaim.objects.create(
                tenant=tenant,
                owner_kind=owner_kind,
                owner_id=owner_id,
                **{r.value: getattr(request, r.value) for r in QuotaResource},
            )
    except IntegrityError as exc:
        raise Conflict(f"{owner_kind} {owner_id} holds a claim already.") from exc


def claim_release(*, tenant: Tenant, owner_kind: str, owner_id: str) -> int:
    deleted, _ = ResourceClaim.objects.for_tenant(tenant).filter(owner_kind=owner_kind, owner_id=owner_id).delete()
    return deleted


# Registries ------------------------------------------------------------------------------

LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_url_normalize(url: str, *, insecure: bool) -> str:
    """Scheme + host[:port], no path. Plain HTTP (and skipping TLS verification) is only for
    loopback registries: anything else would send credentials in the clear."""
    url = (url or "").strip()
    if "://" not in url:
        url = "https://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"Not a valid URL: {exc}.", field="url") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("The URL must use https:// (or http:// for a loopback registry).", field="url")
    host = parts.hostname or ""
    if not host or parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise InvalidInput("Give the registry as scheme://host[:port] with no path or credentials.", field="url")
    if (parts.scheme == "http" or insecure) and not _is_loopback(host):
        raise InvalidInput(
            "Insecure (plain HTTP or unverified TLS) is allowed only for loopback registries.",
            field="insecure" if insecure else "url",
        )
    if parts.scheme == "http" and not insecure:
        raise InvalidInput("A plain-HTTP registry must be marked insecure.", field="insecure")
    hostport = f"[{host}]" if ":" in host else host
    normalized = f"{parts.scheme}://{hostport}" + (f":{port}" if port else "")
    try:
        check_registry_host(*host_port(normalized), allowed=platform_registry_hosts())
    except AddressRefused as exc:
        # The platform's own services listen there (Redis, PostgreSQL, libvirt, metadata...).
        raise PolicyViolation(
            f"Not allowed: {exc}. Such addresses are the platform's own; a platform admin can allow a registry "
            "the platform runs there (PORTAL_REGISTRY_HOST_ALLOWLIST).",
            field="url",
        ) from exc
    return normalized


@transaction.atomic
def registry_create(
    *, access, name: str, url: str, username: str = "", password: str = "", insecure: bool = False
) -> ImageRegistry:
    tenant = access.tenant
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A name is required.", field="name")
    if ImageRegistry.objects.for_tenant(tenant).filter(name=name).exists():
        raise InvalidInput(f"A registry named '{name}' exists already.", field="name")
    registry = ImageRegistry.objects.create(
        tenant=tenant,
        name=name,
        url=registry_url_normalize(url, insecure=insecure),
        username=username or "",
        insecure=insecure,
        password_encrypted=secret_encrypt(password) if password else b"",
    )
    _audit(
        actor=access.actor,
        tenant=tenant,
        action=AuditAction.REGISTRY_CREATE,
        target=name,
        data={"url": registry.url, "username": registry.username, "password_set": bool(password)},
    )
    return registry


_UNSET = object()


def _credentials_would_move(registry: ImageRegistry, *, url: str, username: str, insecure: bool) -> bool:
    """A stored password goes only where it was entered: the same URL, for the same user, with
    TLS verified if it was verified then."""
    return url != registry.url or username != registry.username or (insecure and not registry.insecure)


@transaction.atomic
def registry_update(
    *, access, registry: ImageRegistry, name=_UNSET, url=_UNSET, username=_UNSET, password=_UNSET, insecure=_UNSET
) -> ImageRegistry:
    """Fields left unset keep their value; password "" clears it. Changing the URL, the username
    or turning TLS verification off needs the password again in the same request (or "" for
    none): the stored one is never sent anywhere it was not entered for."""
    changed = []
    new_insecure = registry.insecure if insecure is _UNSET else bool(insecure)
    if url is _UNSET and insecure is _UNSET:
        new_url = registry.url
    else:
        new_url = registry_url_normalize(registry.url if url is _UNSET else url, insecure=new_insecure)
    new_username = registry.username if username is _UNSET else (username or "")
    if (
        password is _UNSET
        and registry.has_password
        and _credentials_would_move(registry, url=new_url, username=new_username, insecure=new_insecure)
    ):
        raise PolicyViolation(
            'Give the password again (or "" for none) when changing url, username or insecure: '
            "the stored password is only ever sent to the registry and user it was entered for.",
            field="password",
        )
    if name is not _UNSET and name != registry.name:
        name = (name or "").strip()
        if not name:
            raise InvalidInput("A name is required.", field="name")
        if ImageRegistry.objects.for_tenant(registry.tenant).filter(name=name).exclude(pk=registry.pk).exists():
            raise InvalidInput(f"A registry named '{name}' exists already.", field="name")
        registry.name = name
        changed.append("name")
    if url is not _UNSET or insecure is not _UNSET:
        registry.url = new_url
        registry.insecure = new_insecure
        changed += ["url", "insecure"]
    if username is not _UNSET:
        registry.username = new_username
        changed.append("username")
    if password is not _UNSET:
        registry.password_encrypted = secret_encrypt(password) if password else b""
        changed.append("password")
    registry.save()
    _audit(
        actor=access.actor,
        tenant=registry.tenant,
        action=AuditAction.REGISTRY_UPDATE,
        target=registry.name,
        data={"changed": changed},
    )
    return registry


@transaction.atomic
def registry_delete(*, access, registry: ImageRegistry) -> None:
    name = registry.name
    registry.delete()
    _audit(actor=access.actor, tenant=access.tenant, action=AuditAction.REGISTRY_DELETE, target=name)


def registry_check_record(*, registry_id: int, ok: bool, message: str) -> None:
    ImageRegistry.objects.filter(pk=registry_id).update(
        last_checked_at=timezone.now(), last_check_ok=ok, last_check_message=message[:255]
    )


# API tokens ------------------------------------------------------------------------------

TOKEN_PREFIX = "hvm_"


def _token_within(*, user, tenant: Tenant | None, minted_by: ApiToken | None) -> None:
    """A token never makes a token broader than itself: a token pinned to a tenant makes only
    tokens of its own user pinned to that same tenant (a browser session, or an unpinned token,
    may pin to any tenant of the user, or not pin)."""
    if minted_by is None:
        return
    if minted_by.user_id != user.pk:
        raise PermissionDenied("A token creates tokens for its own user only.")
    if minted_by.tenant_id is None:
        return
    if tenant is None:
        raise PermissionDenied(
            f"This token is pinned to tenant '{minted_by.tenant.slug}': it can only create tokens pinned to it.",
            field="tenant",
        )
    if tenant.pk != minted_by.tenant_id:
        raise PermissionDenied(
            f"This token is pinned to tenant '{minted_by.tenant.slug}': it cannot create tokens for another tenant.",
            field="tenant",
        )


@transaction.atomic
def api_token_create(
    *, user, name: str, tenant: Tenant | None = None, minted_by: ApiToken | None = None
) -> tuple[ApiToken, str]:
    """Returns the token row and its secret; the secret is not stored and not shown again.
    ``minted_by`` is the token that authenticated the request, if one did (see _token_within)."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A name is required.", field="name")
    if len(name) > 64:
        raise InvalidInput("At most 64 characters.", field="name")
    try:
        _token_within(user=user, tenant=tenant, minted_by=minted_by)
    except PermissionDenied:
        logger.warning(
            "token.create_refused",
            extra={"user_id": user.pk, "minted_by_id": minted_by.pk, "tenant_id": tenant.pk if tenant else None},
        )
        raise
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, tenant=tenant, name=name, prefix=key[:12], key_sha256=token_digest(key))
    _audit(
        actor=user,
        tenant=tenant,
        action=AuditAction.TOKEN_CREATE,
        target=token.prefix,
        data={"name": name, "minted_by": minted_by.prefix if minted_by else None},
    )
    return token, key


@transaction.atomic
def api_token_revoke(*, user, token: ApiToken) -> None:
    if token.user_id != user.pk:
        raise PermissionDenied("Not your token.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        _audit(actor=user, tenant=token.tenant, action=AuditAction.TOKEN_REVOKE, target=token.prefix)
