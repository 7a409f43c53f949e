"""The host's record of one shell session (vmworker.exec_agent): who it answers, how far its
output went, what is still unacknowledged. Bounded by construction: the agent keeps at most
MAX_SESSIONS_PER_HOST of them (at most MAX_SESSIONS_PER_TENANT of one tenant's), and a session
holds counters, never output.

Flow control, end to end: the guest sends at most SHELL_WINDOW_BYTES of output that the host
has not acked (vmworker.guestinit.protocol). The agent acks the guest only for bytes its client
(the portal's consumer) has confirmed with a cumulative ``offset``, and the consumer confirms only
what the browser (or API client) has acked as written to its terminal (portal.consumers,
ExecConsumer); so a browser that reads slowly, or not at all, holds the shell back with at most
one window waiting in Redis and the portal, and a lost Channels message (Redis is at-most-once)
never wedges the window: the next cumulative ack covers it.

No Django here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vmworker.guestinit.protocol import SHELL_ID_PATTERN, SHELL_MAX_SESSIONS

MAX_SESSIONS_PER_HOST = 64
MAX_SESSIONS_PER_INSTANCE = SHELL_MAX_SESSIONS
MAX_SESSIONS_PER_TENANT = 16  # per host: one tenant's shells leave room for the others' (a setting)
OPEN_TIMEOUT_S = 30.0  # a guest that never answers sh-open (its port busy with a long check...)
CLIENT_IDLE_S = 30.0  # a client not heard of for this long is gone (it acks every couple of seconds)
CLOSE_REPLY_GRACE_S = 5.0  # after a close: how long the guest's sh-exit is waited for


def valid_session_id(value) -> bool:
    return isinstance(value, str) and SHELL_ID_PATTERN.fullmatch(value) is not None


@dataclass
class ShellSession:
    session_id: str
    instance_id: str
    reply_to: str
    tenant: str = ""
    opened: bool = False
    closing_since: float | None = None
    created_at: float = field(default_factory=time.monotonic)
    heard_at: float = field(default_factory=time.monotonic)
    sent: int = 0  # output bytes passed to the client
    guest_acked: int = 0  # of those, acked to the guest (all the client confirmed)

    @property
    def unacked(self) -> int:
        """Output passed on that the guest has not been acked for: never above SHELL_WINDOW_BYTES
        from a guest that keeps to the protocol."""
        return self.sent - self.guest_acked

    def output(self, nbytes: int) -> int:
        """Counts output passed on; returns its offset (where it starts in the stream)."""
        offset = self.sent
        self.sent += nbytes
        return offset

    def client_ack(self, offset) -> int:
        """The client has everything before ``offset``: the bytes to ack to the guest now (0 for
        an ack that is stale, bogus or beyond what was sent)."""
        self.heard_at = time.monotonic()
        if not isinstance(offset, int) or isinstance(offset, bool):
            return 0
        confirmed = min(offset, self.sent)
        if confirmed <= self.guest_acked:
            return 0
        delta = confirmed - self.guest_acked
        self.guest_acked = confirmed
        return delta

    def expired(self, now: float) -> str | None:
        """Why the agent should give this session up now, or None."""
        if not self.opened and now - self.created_at > OPEN_TIMEOUT_S:
            return "the instance did not open a shell in time"
        if self.closing_since is not None and now - self.closing_since > CLOSE_REPLY_GRACE_S:
            return "closed"
        if now - self.heard_at > CLIENT_IDLE_S:
            return "the client went away"
        return None
