"""What an instance's guest runs: its app's argv and environment from the image's config and the
spec's overrides, by Docker's rules (Marathon's ``cmd`` is a shell command line)."""

from __future__ import annotations

from vmworker.images.manifest import ImageConfig
from vmworker.runtime_types import NothingToRun


def resolve_argv(
    config: ImageConfig,
    *,
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
    shell_command: str | None,
) -> tuple[str, ...]:
    """Docker's rules: an Entrypoint override drops the image's Cmd; a Cmd override keeps the
    Entrypoint. Marathon's ``cmd`` is a shell command line and replaces both."""
    if shell_command is not None:
        return ("/bin/sh", "-c", shell_command)
    chosen_entrypoint = entrypoint if entrypoint is not None else config.entrypoint
    if command is not None:
        chosen_cmd = command
    else:
        chosen_cmd = () if entrypoint is not None else config.cmd
    argv = tuple(chosen_entrypoint) + tuple(chosen_cmd)
    if not argv:
        raise NothingToRun("the image has no Entrypoint or Cmd and no command was given")
    return argv


def merge_env(image_env: tuple[str, ...], overrides: dict[str, str]) -> tuple[str, ...]:
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(overrides)
    return tuple(f"{key}={value}" for key, value in merged.items())
