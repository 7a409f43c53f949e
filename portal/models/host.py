from django.db import models

from portal.choices import HostState, VirtType


class ComputeHost(models.Model):
    """A compute host: one Celery worker bound to its own queue and its own libvirt URI.
    Capacity is what the worker reported; what is claimed is summed from the live
    instances placed on it, under this row's lock (see portal.scheduling)."""

    name = models.CharField(max_length=128, unique=True)
    queue = models.CharField(max_length=160, unique=True)
    libvirt_uri = models.CharField(max_length=255)
    # Published ports listen here; hosts sharing an address (several on one machine) share its ports.
    publish_ip = models.GenericIPAddressField(default="127.0.0.1")
    vcpus = models.PositiveIntegerField()
    memory_mib = models.PositiveIntegerField()
    virt_type = models.CharField(max_length=8, choices=VirtType.choices)
    probe_s = models.FloatField(null=True)
    state = models.CharField(max_length=8, choices=HostState.choices, default=HostState.UP)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_at = models.DateTimeField()
    # Ports of publish_ip that a program outside the platform held when a boot tried them:
    # {"20000": unix time until which placement skips it}. Written by the host's worker.
    blocked_ports = models.JSONField(default=dict, blank=True)
    # Paused blank VMs per shape (vmworker.warm_pool), from the heartbeat:
    # {"1x128": {"ready": 1, "target": 2}}. Empty: the host keeps no pool.
    warm_pool = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
