"""Shells and one-shot commands in a running instance's container (issue 13).

Contract:

- Who: the developer role or above in the instance's tenant (tenants.access, the one rule). A
  viewer is refused with ``ExecRefused`` (its message says why); an instance of another tenant or
  an unknown one is ``InstanceNotFound`` (as every tenant-scoped lookup: 404, never 403); an
  instance that is not up (running, healthy, unhealthy) on a host is ``InstanceNotRunning``.
- Audit: every shell session (``exec.shell``) and every one-shot command (``exec.run``) writes an
  AuditEntry before it starts: the actor, the instance (target), its app, the session id and the
  command (first AUDIT_COMMAND_MAX_CHARS).
- How: the instance's host runs an exec agent (vmworker.exec_agent) on the Channels layer; a
  shell's consumer (portal.consumers.ExecConsumer) and ``exec_run`` here talk to it with the
  messages documented there. A one-shot command runs ``/bin/sh -c`` on a raw PTY (stdout and
  stderr together, byte for byte, stdin empty); its output is capped at EXEC_MAX_OUTPUT_BYTES
  (output past it ends the command there: its shell is closed, the answer comes at once with the
  output that fitted, ``truncated`` and no exit code; the rest is never streamed), its time at
  the request's timeout (at most EXEC_MAX_TIMEOUT_S; then the shell is closed: ``timed_out``, no
  exit code).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import shlex
import time
import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from portal.choices import INSTANCE_UP
from portal.models import Instance
from tenants.access import TenantAccess
from tenants.choices import AuditAction, TenantRole
from tenants.models import AuditEntry
from vmworker.exec_agent import exec_channel
from vmworker.guestinit.protocol import EXEC_MAX_COMMAND_BYTES

logger = logging.getLogger(__name__)

AUDIT_COMMAND_MAX_CHARS = 512
ACK_EVERY_S = 2.0  # the agent gives a client up after 30 s without a word
COMMAND_MAX_ARGS = 256


class ExecRefused(Exception):
    pass


class InstanceNotFound(Exception):
    pass


class InstanceNotRunning(Exception):
    pass


class ExecUnavailable(Exception):
    """The instance's host did not answer, or could not reach the instance."""


class ExecCommandInvalid(ValueError):
    pass


def exec_refusal_message(access: TenantAccess) -> str:
    return (
        "Opening a shell or running a command in an instance needs the developer role in this tenant; "
        f"your role is {access.effective_role or 'none'}."
    )


def exec_instance(*, access: TenantAccess, instance_id) -> Instance:
    """The running instance a shell or command may be opened in, for this access."""
    if not access.allows(TenantRole.DEVELOPER):
        raise ExecRefused(exec_refusal_message(access))
    try:
        instance_id = uuid.UUID(str(instance_id))
    except ValueError:
        raise InstanceNotFound("No such instance.") from None
    instance = Instance.objects.for_tenant(access.tenant).select_related("host", "app").filter(pk=instance_id).first()
    if instance is None:
        raise InstanceNotFound("No such instance.")
    if instance.status not in INSTANCE_UP or instance.host is None:
        raise InstanceNotRunning(f"The instance is {instance.status}: a shell needs it running.")
    return instance


def exec_audit(*, access: TenantAccess, instance: Instance, action: str, session_id: str, command: str | None) -> None:
    AuditEntry.objects.create(
        tenant=access.tenant,
        actor=access.actor if access.actor is not None and access.actor.is_authenticated else None,
        action=action,
        target=str(instance.pk),
        data={
            "app": instance.app.marathon_id,
            "instance": str(instance.pk),
            "session": session_id,
            "command": None if command is None else command[:AUDIT_COMMAND_MAX_CHARS],
        },
    )
    logger.info("exec.audited", extra={"action": action, "instance_id": str(instance.pk), "tenant": access.tenant.slug})


def exec_shell_start(*, access: TenantAccess, instance_id, command: str | None = None) -> tuple[Instance, str]:
    """Authorizes a shell and writes its audit entry; returns the instance and the session id."""
    instance = exec_instance(access=access, instance_id=instance_id)
    session_id = uuid.uuid4().hex
    exec_audit(access=access, instance=instance, action=AuditAction.EXEC_SHELL, session_id=session_id, command=command)
    return instance, session_id


def exec_command_line(command) -> str:
    """A command given as a list of arguments, as one ``/bin/sh -c`` line (each argument quoted)."""
    if not isinstance(command, list) or not 1 <= len(command) <= COMMAND_MAX_ARGS:
        raise ExecCommandInvalid(f"command must be a list of 1-{COMMAND_MAX_ARGS} strings")
    if not all(isinstance(argument, str) for argument in command):
        raise ExecCommandInvalid("every argument of command must be a string")
    line = shlex.join(command)
    if "\0" in line or len(line.encode()) > EXEC_MAX_COMMAND_BYTES:
        raise ExecCommandInvalid(f"command must be at most {EXEC_MAX_COMMAND_BYTES} bytes without NUL")
    return line


def exec_timeout(value) -> float:
    if value is None:
        return settings.EXEC_DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= settings.EXEC_MAX_TIMEOUT_S:
        raise ExecCommandInvalid(
            f"timeout must be a number of seconds above 0, at most {settings.EXEC_MAX_TIMEOUT_S:g}"
        )
    return float(value)


@dataclass(frozen=True)
class ExecRunResult:
    output: bytes
    exit_code: int | None
    timed_out: bool
    truncated: bool


def exec_run(*, access: TenantAccess, instance_id, command, timeout=None) -> ExecRunResult:
    """Runs one command in the instance (sync: for the REST view) and returns its output and exit."""
    line = exec_command_line(command)
    timeout_s = exec_timeout(timeout)
    instance = exec_instance(access=access, instance_id=instance_id)
    session_id = uuid.uuid4().hex
    exec_audit(access=access, instance=instance, action=AuditAction.EXEC_RUN, session_id=session_id, command=line)
    return async_to_sync(exec_run_on_host)(
        host_name=instance.host.name,
        instance_id=str(instance.pk),
        tenant=str(instance.tenant_id),
        session_id=session_id,
        command=line,
        timeout_s=timeout_s,
        max_output_bytes=settings.EXEC_MAX_OUTPUT_BYTES,
    )


async def exec_run_on_host(
    *,
    host_name: str,
    instance_id: str,
    tenant: str,
    session_id: str,
    command: str,
    timeout_s: float,
    max_output_bytes: int,
) -> ExecRunResult:
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    agent = exec_channel(host_name)
    base = {"session": session_id}
    request = {"type": "exec.open", "instance_id": instance_id, "tenant": tenant, "reply_to": reply_to}
    request |= {"rows": 24, "cols": 80}
    await layer.send(agent, base | request | {"tty": False, "command": command, "sent_at": time.time()})
    started = time.monotonic()
    output = bytearray()
    received = 0
    opened = False
    while True:
        now = time.monotonic()
        if not opened and now - started > settings.EXEC_OPEN_TIMEOUT_S:
            await layer.send(agent, base | {"type": "exec.close"})
            raise ExecUnavailable("The instance's host did not answer.")
        if now - started >= timeout_s:
            await layer.send(agent, base | {"type": "exec.close"})
            return ExecRunResult(bytes(output), None, timed_out=True, truncated=False)
        wait_s = min(ACK_EVERY_S, timeout_s - (now - started))
        try:
            message = await asyncio.wait_for(layer.receive(reply_to), wait_s)
        except TimeoutError:
            await layer.send(agent, base | {"type": "exec.ack", "offset": received})  # liveness
            continue
        if message.get("session") != session_id:
            continue
        kind = message.get("type")
        if kind == "exec.opened":
            opened = True
        elif kind == "exec.output":
            data = binascii.a2b_base64(message["data"])
            received = message["offset"] + len(data)
            room = max_output_bytes - len(output)
            output += data[: max(room, 0)]
            if len(data) > room:  # past the cap: the command is ended, not streamed on until its timeout
                await layer.send(agent, base | {"type": "exec.close"})
                return ExecRunResult(bytes(output), None, timed_out=False, truncated=True)
            await layer.send(agent, base | {"type": "exec.ack", "offset": received})
        elif kind == "exec.exit":
            return ExecRunResult(bytes(output), int(message["exit_code"]), timed_out=False, truncated=False)
        elif kind == "exec.error":
            raise ExecUnavailable(str(message.get("message", "")))
