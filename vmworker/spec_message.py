"""The boot message a compute host receives: one instance's complete spec as JSON-safe data.

Contract: the portal builds it (portal.services.instance_specs) from its rows and sends it with
the host's boot task; the host needs nothing else of the portal to boot the instance. It carries
the registry credentials for this one pull only (never a tenant's other registries), the ports
as (host port, guest port) pairs (the host binds them on its own publish address), the tenant
network attachment, the volumes of the instance's slot, the stop grace and the health checks the
host probes. The credentials travel sealed with the host's own key (vmworker.report_signing):
another host that reads the broker cannot open them. ``SPEC_VERSION`` changes when a field
changes meaning; a host refuses a version it does not know rather than guess. Pure: no Django,
no I/O.
"""

from __future__ import annotations

from typing import Any

from vmworker.driver.spec import PortForward
from vmworker.images.credentials import RegistryCredentials
from vmworker.network.tenant import NetworkAttachment, TenantNetwork
from vmworker.report_signing import SealBroken, unseal
from vmworker.runtime import InstanceSpec, InvalidSpec, VolumeAttachment

SPEC_VERSION = 1


def credentials_from_message(message: dict[str, Any], host_key: bytes | None) -> dict | None:
    """The pull's credentials: sealed (``{"sealed": token}``) for this host's key, or, from a
    portal that seals nothing (PORTAL_HOST_REPORTS_SIGNED=0), as they are."""
    credentials = message.get("credentials")
    if not credentials:
        return None
    if "sealed" not in credentials:
        return credentials
    if host_key is None:
        raise InvalidSpec("the pull's credentials are sealed and this host has no key (HYPERVM_HOST_KEY_FILE)")
    try:
        return unseal(host_key, credentials["sealed"])
    except SealBroken as exc:
        raise InvalidSpec("the pull's credentials are not sealed for this host") from exc


def spec_from_message(
    message: dict[str, Any], *, publish_host_ip: str, host_name: str, host_key: bytes | None = None
) -> InstanceSpec:
    """The runtime's InstanceSpec of a boot message; InvalidSpec when it is not one."""
    if not isinstance(message, dict) or message.get("version") != SPEC_VERSION:
        raise InvalidSpec(f"not a version {SPEC_VERSION} instance spec")
    try:
        credentials = credentials_from_message(message, host_key)
        network = message.get("network")
        return InstanceSpec(
            image=str(message["image"]),
            instance_id=str(message["instance_id"]),
            name=str(message["name"]),
            credentials=RegistryCredentials(str(credentials["username"]), str(credentials["password"]))
            if credentials
            else None,
            tls_verify=bool(message["tls_verify"]),
            shell_command=message.get("shell_command"),
            command=tuple(message["command"]) if message.get("command") else None,
            env={str(k): str(v) for k, v in message["env"].items()},
            user=message.get("user"),
            vcpus=int(message["vcpus"]),
            memory_mib=int(message["memory_mib"]),
            cpu_quota_pct=message.get("cpu_quota_pct"),
            ports=tuple(
                PortForward(host_ip=publish_host_ip, host_port=int(p["host_port"]), guest_port=int(p["guest_port"]))
                for p in message["ports"]
            ),
            metadata={**{str(k): str(v) for k, v in message["metadata"].items()}, "host": host_name},
            stop_grace_s=message.get("stop_grace_s"),
            network=NetworkAttachment(
                network=TenantNetwork.for_network_id(network["network_id"]),
                mac=network["mac"],
                ip_cidr=network["ip_cidr"],
            )
            if network
            else None,
            overlay_size_mib=message.get("overlay_size_mib"),
            disk_quota_left_bytes=message.get("disk_quota_left_bytes"),
            disk_quota_held_digests=frozenset(message.get("disk_quota_held_digests", ())),
            volumes=tuple(
                VolumeAttachment(
                    volume_id=str(v["volume_id"]),
                    pool_name=str(v["pool_name"]),
                    volume_name=str(v["volume_name"]),
                    size_mib=int(v["size_mib"]),
                    container_path=str(v["container_path"]),
                )
                for v in message["volumes"]
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSpec(f"a malformed instance spec: {exc!r}") from exc
