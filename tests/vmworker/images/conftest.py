from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.registry import LocalRegistry
from vmworker.images import ImageStore, RegistryCredentials

GIB = 1024 * 1024 * 1024


@pytest.fixture
def credentials(registry: LocalRegistry) -> RegistryCredentials:
    return RegistryCredentials(username=registry.username, password=registry.password)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "image-store"


@pytest.fixture
def store(store_root: Path) -> ImageStore:
    return ImageStore(store_root, max_cache_bytes=GIB, max_image_bytes=GIB)
