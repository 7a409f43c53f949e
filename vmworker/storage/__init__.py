"""Persistent volumes on libvirt storage pools (no Django).

Contract: every compute host has one storage pool (``StoragePool``; a ``dir`` pool under the
host's state dir today), made by the host's worker. A volume is a raw storage volume created
through the pool API (``storageVolCreateXML``) as a fresh sparse file, so no block of an earlier
volume is readable from it; the runtime formats it ext4 once (``volume_format``) and attaches it
as a writable virtio disk found in the guest by its serial. Deleting goes through the pool API
too. The pool type is the one place that knows where the blocks live: an ``rbd`` pool (Ceph)
would give the same volumes as network disks, a configuration change (see README, "Volumes").

The names are the platform's, here once for both sides: a host's pool is ``hvm-vol-<host>``, a
volume ``hvvol-<volume uuid>``; a host deletes nothing in its pool without that prefix.
"""

POOL_NAME_PREFIX = "hvm-vol-"
VOLUME_NAME_PREFIX = "hvvol-"


def pool_name(host_name: str) -> str:
    """The host's storage pool: one per host, so several hosts on one libvirtd stay apart."""
    return f"{POOL_NAME_PREFIX}{host_name}"
