"""Removing a throwaway storage pool a test or a bench made (the platform keeps a host's pool for
good, so the driver has no such operation): its volumes, then the pool itself."""

from __future__ import annotations


def remove_storage_pool(name: str, uri: str = "qemu:///system") -> None:
    import libvirt  # the test plays the operator; the driver never lets libvirt out

    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        pool = connection.storagePoolLookupByName(name)
        for volume_name in pool.listVolumes():
            pool.storageVolLookupByName(volume_name).delete(0)
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        connection.close()
