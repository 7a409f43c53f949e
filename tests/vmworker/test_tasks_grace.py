"""A version stored before the platform capped taskKillGracePeriodSeconds is relaunched and
stopped with today's cap, never with the day it once asked for (review L5)."""

from portal.marathon import parse_app_definition
from portal.marathon.platform_policy import PlatformPolicy
from portal.services.instance_specs import kill_grace_s

APP = {"id": "/old", "cmd": "sleep 1", "cpus": 0.1, "mem": 64, "container": {"docker": {"image": "demo/h:1"}}}


def test_a_stored_day_long_grace_is_cut_to_the_platform_cap(settings):
    before_the_cap = PlatformPolicy(max_task_kill_grace_period_s=86400)
    settings.APP_DEFINITION_LIMITS = settings.APP_DEFINITION_LIMITS | {"max_task_kill_grace_period_s": 120}

    stored = parse_app_definition({**APP, "taskKillGracePeriodSeconds": 86400}, policy=before_the_cap)

    assert kill_grace_s(stored) == 120
    assert kill_grace_s(parse_app_definition({**APP, "taskKillGracePeriodSeconds": 7})) == 7
    assert kill_grace_s(parse_app_definition(APP)) is None
