"""Marathon path ids (``/group/sub/app``): validation and canonical form.

Contract: ``canonical_path_id(raw, base_group)`` returns the absolute id with a leading ``/`` and no
trailing ``/``, or raises ``InvalidPathId`` with a message fit for a 422. A relative id is resolved
against ``base_group`` (``..`` climbs one group, ``.`` stays); doubled slashes are dropped, as
marathon-python produces them (``/v2/apps//web``). Each segment must match Marathon's pattern:
lowercase letters, digits and ``-`` (not at either end), with ``.`` allowed between such names.
"""

from __future__ import annotations

import re

PATH_SEGMENT_PATTERN = re.compile(r"^(([a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])$")
ROOT_GROUP = "/"


class InvalidPathId(ValueError):
    pass


def path_id_segments(path_id: str) -> list[str]:
    """The non-empty segments of a path id, in order (``"//a/b/"`` -> ``["a", "b"]``)."""
    return [segment for segment in path_id.split("/") if segment]


def canonical_path_id(raw_path_id: str, base_group: str = ROOT_GROUP) -> str:
    if not raw_path_id.strip("/"):
        raise InvalidPathId("must not be empty or the root group '/'")
    segments = [] if raw_path_id.startswith("/") else path_id_segments(canonical_group_id(base_group))
    for segment in path_id_segments(raw_path_id):
        if segment == ".":
            continue
        if segment == "..":
            if not segments:
                raise InvalidPathId(f"'{raw_path_id}' climbs above the root group")
            segments.pop()
            continue
        if not PATH_SEGMENT_PATTERN.match(segment):
            raise InvalidPathId(
                f"path segment '{segment}' is invalid: use lowercase letters, digits and '-' "
                "(not at either end), with '.' between such names"
            )
        segments.append(segment)
    if not segments:
        raise InvalidPathId(f"'{raw_path_id}' resolves to the root group '/'")
    return "/" + "/".join(segments)


def canonical_group_id(raw_group_id: str) -> str:
    """Canonical form of an absolute group id; the root group is ``/``."""
    if not raw_group_id.strip("/"):
        return ROOT_GROUP
    return canonical_path_id("/" + raw_group_id.lstrip("/"))
