"""Validation of the traffic model's offline outages."""

from __future__ import annotations

import msgspec
import pytest

from gateway.errors import ConfigError
from loadtests import scenario as sc


def test_builtin_model_has_outages() -> None:
    offline = sc.load_model().offline
    assert 0 < offline.share < 1
    assert offline.stops >= 1
    assert 1 <= offline.batch_max <= 1000


@pytest.mark.parametrize("change", [{"share": 1.5}, {"share": -0.1}, {"stops": 0}, {"batch_max": 0},
                                    {"batch_max": 1001}])
def test_invalid_outage_rejected(change: dict) -> None:
    model = sc.load_model()
    broken = msgspec.structs.replace(model, offline=msgspec.structs.replace(model.offline, **change))
    with pytest.raises(ConfigError, match=r"\$\.offline") as info:
        sc.validate_model(broken)
    assert "流量模型无效：$.offline" in info.value.message_zh
