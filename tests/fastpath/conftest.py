"""Fixtures of the fast-path tests: every test that takes ``impl`` runs on both implementations."""

from __future__ import annotations

import importlib
import types

import pytest

from fastpath.issuer import Card, IssuerKey, Phone

# 2026-06-01 00:00 local time (Asia/Shanghai), in Unix milliseconds.
NOW_MS = 1_780_243_200_000
DAY_MS = 86_400_000
DEVICE = b"bus-101-v1"


@pytest.fixture(params=["compiled", "python"])
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    """The verifier module under test: ``fastpath._verify`` or ``fastpath._verify_py``."""
    name = {"compiled": "fastpath._verify", "python": "fastpath._verify_py"}[request.param]
    return importlib.import_module(name)


@pytest.fixture
def issuer_key() -> IssuerKey:
    return IssuerKey.from_seed(7, bytes(range(32)))


@pytest.fixture
def ring(impl: types.ModuleType, issuer_key: IssuerKey):
    keys = impl.KeyRing()
    keys.add(issuer_key.key_id, issuer_key.public_key)
    return keys


@pytest.fixture
def verifier(impl: types.ModuleType, ring):
    return impl.Verifier(ring, clock_skew_s=30, code_lifetime_s=60, offline_upload_max_s=7 * 86_400,
                         cache_size=1000)


@pytest.fixture
def phone(issuer_key: IssuerKey) -> Phone:
    return Phone.new(issuer_key, valid_from_ms=NOW_MS - 30 * DAY_MS, valid_until_ms=NOW_MS + 30 * DAY_MS,
                     holder_seed=b"\x11" * 32)


@pytest.fixture
def card(issuer_key: IssuerKey) -> Card:
    return Card.new(issuer_key, valid_from_ms=NOW_MS - 30 * DAY_MS, valid_until_ms=NOW_MS + 30 * DAY_MS,
                    holder_seed=b"\x22" * 32)
