"""Images in use charge their tenant's disk quota.

One claim per tenant per manifest digest (``owner_kind="image"``, ``owner_id`` the digest's hex),
of the image's unpacked size as its host measured it while unpacking, held while any live
instance of the tenant runs that image and released when the last one ends. Both sides take the
tenant's quota row lock after the instance row (the order instance_transition uses), so a claim
and a release of one digest never interleave. The other disk claims: each instance's writable
layer (``portal.services.instances.CLAIM_KIND``) and, later, volumes (their own kind).
"""

from __future__ import annotations

import logging
import math

from django.db import transaction

from portal.choices import INSTANCE_ACTIVE
from portal.models import Instance
from tenants.models import Quota, ResourceClaim, Tenant
from tenants.services import ResourceRequest, claim_release, quota_reserve

logger = logging.getLogger(__name__)
IMAGE_CLAIM_KIND = "image"
MIB = 1024 * 1024


def image_claim_owner_id(manifest_digest: str) -> str:
    return manifest_digest.split(":", 1)[1]  # the hex: ResourceClaim.owner_id holds 64 characters


def instance_image_claim(*, instance_id, manifest_digest: str, unpacked_bytes: int) -> bool:
    """Records the image on the instance and charges it to the tenant unless a live instance of
    the tenant charged it already. QuotaExceeded (nothing written) when the disk quota cannot
    hold it; False (nothing written) when the instance ended meanwhile."""
    with transaction.atomic():
        instance = (
            Instance.objects.select_for_update(of=("self",))
            .select_related("tenant")
            .filter(pk=instance_id, status__in=INSTANCE_ACTIVE)
            .first()
        )
        if instance is None:
            return False
        tenant = instance.tenant
        owner_id = image_claim_owner_id(manifest_digest)
        Quota.objects.select_for_update().get(tenant=tenant)
        held = ResourceClaim.objects.for_tenant(tenant).filter(owner_kind=IMAGE_CLAIM_KIND, owner_id=owner_id)
        if not held.exists():
            quota_reserve(
                tenant=tenant,
                owner_kind=IMAGE_CLAIM_KIND,
                owner_id=owner_id,
                request=ResourceRequest(disk_mib=max(1, math.ceil(unpacked_bytes / MIB))),
            )
        Instance.objects.filter(pk=instance.pk).update(image_digest=manifest_digest)
    logger.info(
        "image.claimed",
        extra={"instance_id": str(instance_id), "digest": manifest_digest, "unpacked_bytes": unpacked_bytes},
    )
    return True


def image_claim_release_unused(*, tenant: Tenant, manifest_digest: str) -> None:
    """After an instance ended, inside its transaction: the image's claim goes when no live
    instance of the tenant runs it any more."""
    if not manifest_digest:
        return
    Quota.objects.select_for_update().get(tenant=tenant)
    if not Instance.objects.filter(tenant=tenant, image_digest=manifest_digest, status__in=INSTANCE_ACTIVE).exists():
        claim_release(tenant=tenant, owner_kind=IMAGE_CLAIM_KIND, owner_id=image_claim_owner_id(manifest_digest))
