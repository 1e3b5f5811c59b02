"""Shared fixtures: one Ray instance for the whole test session (starting Ray costs seconds)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A fresh local Ray (2 CPUs, no dashboard), shared by every test that asks for it."""
    import ray

    from distributed.raystart import start_ray

    start_ray(num_cpus=2, quiet=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_session: Any) -> str:
    """The session Ray's address, for driver subprocesses that join it with --address."""
    return ray_session.get_runtime_context().gcs_address



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `ray up` test first: its nodes share this machine's network and need Ray's fixed ports
    (127.0.0.1:52365, where `ray job submit` lands, among them), which the session Ray holds from
    the first test that asks for it until the end."""
    items.sort(key=lambda item: item.path.name != "test_launcher.py")  # a stable sort keeps the rest in order
