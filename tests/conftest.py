"""Shared fixtures: seeded torch state per test, tiny models."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    # Seed per test (never at import) so tests do not depend on their order.
    torch.manual_seed(1234)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(42)
