"""A small traffic model and its fixture, shared by the load-test tests."""

from __future__ import annotations

import random

import msgspec
import pytest

from fastpath.issuer import IssuerKey
from loadtests import scenario as sc
from loadtests.fixture import Fixture, make_fixture


@pytest.fixture(scope="session")
def small_model() -> sc.TrafficModel:
    """The built-in Yiyuan model with few holders, so fixtures are quick to make."""
    return msgspec.structs.replace(sc.load_model(), holders=40, lost_cards=4, arrears_accounts=4)


@pytest.fixture(scope="session")
def issuer() -> IssuerKey:
    return IssuerKey.generate(key_id=7)


@pytest.fixture(scope="session")
def small_fixture(small_model: sc.TrafficModel, issuer: IssuerKey) -> Fixture:
    return make_fixture(small_model, issuer, seed=1)


@pytest.fixture
def run_spec(small_model: sc.TrafficModel, tmp_path) -> sc.RunSpec:
    return sc.RunSpec(model=small_model, shape=sc.ShapeSpec(), scenarios=list(sc.SCENARIOS),
                      fixture_path=str(tmp_path / "fixture.json"), answers_dir=str(tmp_path / "answers"),
                      out_dir=str(tmp_path))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(5)
