"""Formatting for the deploy pages: durations in the units a person reads at a glance."""

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def duration_until(start, end) -> str:
    """``{{ d.created_at|duration_until:d.finished_at }}`` -> "4.2 s", "3 min 5 s", "1 h 2 min"."""
    if start is None or end is None:
        return ""
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@register.filter
def age(moment) -> str:
    """``{{ host.last_heartbeat_at|age }}`` -> "4.2 s ago"."""
    if moment is None:
        return "never"
    return f"{duration_until(moment, timezone.now())} ago"


@register.filter
def seconds_until(moment) -> str:
    """``{{ i.not_before|seconds_until }}`` -> "3 s", "1 min 5 s" (as portal.js counts it down)."""
    if moment is None:
        return ""
    seconds = max(0.0, (moment - timezone.now()).total_seconds())
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"
