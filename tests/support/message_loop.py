"""Messages between the portal and a host delivered in-process, in order, for fast tests: every
``send_task`` of the Celery app runs the named task's function at once (the portal's tasks and
the host's alike), and is recorded. Live tests use the real broker and workers instead."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from celery import current_app


@dataclass
class MessageLoop:
    sent: list[tuple[str, list, dict]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # task names recorded but not run

    def names(self) -> list[str]:
        return [name for name, _, _ in self.sent]

    def send_task(self, name: str, args=None, kwargs=None, **options):
        args, kwargs = list(args or ()), dict(kwargs or {})
        self.sent.append((name, args, kwargs))
        if name in self.held:
            return None
        task = current_app.tasks[name]
        return task.run(*args, **kwargs)


@pytest.fixture
def message_loop(monkeypatch) -> MessageLoop:
    import portal.tasks  # noqa: F401 (registers the portal's tasks)
    import vmworker.tasks  # noqa: F401 (registers the host's tasks)
    from portal.services.host_keys import host_key
    from vmworker import host_config, tasks

    loop = MessageLoop()
    monkeypatch.setattr(current_app._get_current_object(), "send_task", loop.send_task)
    # The host signs with its own key, as a provisioned host does (portal.services.host_keys).
    monkeypatch.setattr(host_config, "host_key", lambda: host_key(tasks.host_name() or ""))
    return loop
