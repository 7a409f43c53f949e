"""Marathon app definitions for the /v2 API and the deploy pipeline: a pure parser and validator.

Contract: ``parse_app_definition`` turns decoded JSON into a frozen, normalised ``AppDefinition``
or raises ``MarathonValidationError`` whose ``details`` is Marathon's 422 ``details`` list with
every bad field; ``merge_app_definition`` applies a PUT/PATCH body. Which fields are supported,
ignored or rejected by name is declared in ``field_policy``. Nothing here imports Django or does I/O.
"""

from portal.marathon.app_definition import AppDefinition
from portal.marathon.app_parser import AppDefinitionPatch, merge_app_definition, parse_app_definition
from portal.marathon.errors import MarathonValidationError

__all__ = [
    "AppDefinition",
    "AppDefinitionPatch",
    "MarathonValidationError",
    "merge_app_definition",
    "parse_app_definition",
]
