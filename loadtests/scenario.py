"""The traffic model of a load test, and the run specification handed to Locust.

A traffic model (TOML) names the operators, bus routes with their stops,
scenic spots and venues with their gates, the mix of rider categories and
media, and the share of each kind of bad traffic. ``models/yiyuan.toml``
is the county's model; its route, stop and site ids are those of the example
rule set, so every valid tap finds a fare.

The run specification (:class:`RunSpec`) is what ``tapgate loadtest`` writes
for the Locust processes: the model, the shape and its parameters, and where
the fixture and the answer files are. Locust processes read it from the file
named by ``TAPGATE_LOADTEST_SPEC``.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import tomllib
from typing import Literal

import msgspec

from gateway.errors import ConfigError

SPEC_ENV = "TAPGATE_LOADTEST_SPEC"
# File in the output directory where the stepped shape writes its result.
STEPPED_RESULT = "stepped.json"

# Kinds of traffic a simulated device sends, with the outcome each must get.
VALID_CARD = "valid_card"
VALID_QR = "valid_qr"
EXPIRED_QR = "expired_qr"
REPLAYED_QR = "replayed_qr"
FORGED_HOLDER = "forged_holder"
FORGED_ISSUER = "forged_issuer"
LOST_CARD = "lost_card"
ARREARS = "arrears"
UNKNOWN_DEVICE = "unknown_device"

BAD_KINDS = (EXPIRED_QR, REPLAYED_QR, FORGED_HOLDER, FORGED_ISSUER, LOST_CARD, ARREARS, UNKNOWN_DEVICE)
VALID_KINDS = (VALID_CARD, VALID_QR)
ALL_KINDS = VALID_KINDS + BAD_KINDS

# The user classes of the locustfile, by the name used on the command line.
SCENARIOS = ("bus", "scenic", "venue")
CATEGORY_KINDS = ("adult", "elderly", "child", "disabled", "priority", "student")


class Operator(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    operator_id: str
    kind: Literal["bus", "scenic", "venue"]
    name_zh: str
    name_en: str


class Route(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    route_id: str
    operator_id: str
    # "flat": one "board" tap per rider; "area": "on" when boarding, "off" when alighting.
    fare_structure: Literal["flat", "area"] = "flat"
    # Stop ids in the order the bus serves them; it turns back at the last one.
    stops: list[str]
    # Validators provisioned for this route (one per bus).
    buses: int = 4
    # Mean riders boarding at one stop in the busiest hour (Poisson); other
    # hours of the peak shape scale it by the day profile.
    boardings_mean: float = 2.0


class Site(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    site_id: str
    operator_id: str
    kind: Literal["scenic", "venue"]
    # Gates provisioned at this site.
    gates: int = 4


class BadTraffic(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Share of each kind of bad traffic among all taps (0.01 is one in a hundred)."""

    expired_qr: float = 0.01
    replayed_qr: float = 0.005
    forged_holder: float = 0.003
    forged_issuer: float = 0.002
    lost_card: float = 0.005
    arrears: float = 0.01
    unknown_device: float = 0.002


class Timing(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Simulated durations, compressed by ``time_scale`` (simulated seconds per real second)."""

    time_scale: float = 20.0
    # Travel time between two stops.
    stop_interval_s: float = 90.0
    # Time between two riders boarding the same bus.
    boarding_interval_s: float = 2.0
    # Time between two people passing the same gate while people are queueing.
    gate_interval_s: float = 3.0
    # Time between two people at a venue gate outside an event rush.
    venue_interval_s: float = 20.0


class Offline(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Buses that lose their mobile connection and upload the taps they kept as one batch."""

    # Chance that a bus loses its connection when it leaves a stop (0 turns outages off).
    share: float = 0.05
    # Stops the bus serves while offline; it uploads when it reaches the next stop after them.
    stops: int = 3
    # Taps per upload request (POST /v1/taps/batch); a longer queue goes in several requests.
    batch_max: int = 200


class TrafficModel(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    operators: list[Operator]
    routes: list[Route] = []
    sites: list[Site] = []
    # Relative weights of rider categories among holders, by category kind.
    categories: dict[str, float] = msgspec.field(default_factory=lambda: {
        "adult": 0.6, "elderly": 0.2, "child": 0.03, "disabled": 0.05, "priority": 0.05, "student": 0.07})
    # Relative weights of media among valid taps.
    media: dict[str, float] = msgspec.field(default_factory=lambda: {"card": 0.45, "qr": 0.55})
    bad: BadTraffic = msgspec.field(default_factory=BadTraffic)
    timing: Timing = msgspec.field(default_factory=Timing)
    offline: Offline = msgspec.field(default_factory=Offline)
    # Relative bus traffic for each local hour 0..23; the peak shape follows it.
    day_profile: list[float] = msgspec.field(default_factory=lambda: [
        0, 0, 0, 0, 0, 0.2, 0.6, 1.0, 0.9, 0.5, 0.4, 0.45, 0.5, 0.45, 0.4, 0.45, 0.6, 0.95, 0.85, 0.5, 0.35, 0.2, 0.1, 0])
    # Relative weights of the user classes in a mixed run.
    user_weights: dict[str, int] = msgspec.field(default_factory=lambda: {"bus": 7, "scenic": 2, "venue": 1})
    # Holders provisioned, and how many of them have a lost card or an account in arrears.
    holders: int = 3000
    lost_cards: int = 60
    arrears_accounts: int = 60
    # Fare-rule reasons (60-79) that a valid tap may get without counting as
    # a wrongly rejected code; 61 is a second entry to a one-entry-per-day site.
    fare_reasons_allowed: list[int] = msgspec.field(default_factory=lambda: [61])


class ShapeSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A load shape and its parameters; :mod:`loadtests.curves` defines each one."""

    name: Literal["ramp", "peak", "soak", "surge", "stepped"] = "ramp"
    duration_s: float = 60.0
    # Users (simulated devices) at full load, and users started per second.
    users: int = 20
    spawn_rate: float = 10.0
    # ramp: seconds to reach ``users``; soak: seconds of its initial ramp.
    ramp_s: float = 10.0
    # surge: users left when the opening rush has passed, and the half-life of the rush.
    surge_floor: float = 0.3
    surge_half_life_s: float = 15.0
    # peak: local hours of the simulated day compressed into ``duration_s``.
    day_start_hour: float = 5.0
    day_end_hour: float = 23.0
    # stepped: first step, users added per step, seconds per step, p99 goal
    # and the error rate above which a step fails.
    step_start: int = 5
    step_users: int = 5
    step_s: float = 15.0
    step_p99_ms: float = 100.0
    step_error_rate_max: float = 0.01


class RunSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: TrafficModel
    shape: ShapeSpec
    # User classes taking part: any of SCENARIOS.
    scenarios: list[str]
    fixture_path: str
    # Directory where each Locust process writes its answer file.
    answers_dir: str
    # Directory for results the shape writes (the stepped search).
    out_dir: str
    # Locust processes generating load (workers, or 1 in a local run); holders
    # and devices are split between them by worker index.
    processes: int = 1
    # The gateway's QR code lifetime and clock skew, so expired codes are really expired.
    code_lifetime_s: int = 60
    clock_skew_s: int = 30
    # The gateway's per-device request limit; each simulated device stays below 90 % of it.
    device_rate_per_s: float = 50.0
    # Unix ms when the specification was written. The journal check ignores rows received
    # earlier, which a reused fixture's devices may have from an earlier run.
    started_ms: int = 0
    # Body format of tap requests: "json" or "msgpack" (the gateway answers in the same format).
    body_format: Literal["json", "msgpack"] = "json"
    # Seconds a request may take before Locust counts it as failed.
    request_timeout_s: float = 10.0


def _check_weights(weights: dict[str, float], known: tuple[str, ...], path: str) -> None:
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ConfigError(f"invalid traffic model: {path} has unknown keys {unknown}, expected some of {list(known)}",
                          f"流量模型无效：{path} 含未知项 {unknown}，应为 {list(known)} 中的项")
    if any(value < 0 for value in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"invalid traffic model: {path} = {weights}, expected weights >= 0 with a positive sum",
                          f"流量模型无效：{path} = {weights}，权重应不小于 0 且总和为正")


def validate_model(model: TrafficModel) -> TrafficModel:
    """Raise :class:`ConfigError` naming the first inconsistency in ``model``; return it unchanged."""
    _check_weights(model.categories, CATEGORY_KINDS, "$.categories")
    _check_weights(model.media, ("card", "qr"), "$.media")
    _check_weights({k: float(v) for k, v in model.user_weights.items()}, SCENARIOS, "$.user_weights")

    shares = msgspec.structs.asdict(model.bad)
    if any(value < 0 for value in shares.values()) or sum(shares.values()) > 0.5:
        raise ConfigError(f"invalid traffic model: $.bad = {shares}, expected shares >= 0 adding up to at most 0.5",
                          f"流量模型无效：$.bad = {shares}，各比例应不小于 0，总和不超过 0.5")
    if len(model.day_profile) != 24 or any(v < 0 for v in model.day_profile) or max(model.day_profile) <= 0:
        raise ConfigError("invalid traffic model: $.day_profile needs 24 weights >= 0, at least one positive",
                          "流量模型无效：$.day_profile 需要 24 个不小于 0 的权重，且至少一个为正")

    offline = model.offline
    if not 0 <= offline.share <= 1 or offline.stops < 1 or not 1 <= offline.batch_max <= 1000:
        raise ConfigError(f"invalid traffic model: $.offline = {msgspec.structs.asdict(offline)}, expected share "
                          "from 0 to 1, stops >= 1 and batch_max from 1 to 1000",
                          f"流量模型无效：$.offline = {msgspec.structs.asdict(offline)}，share 应在 0 到 1 之间，"
                          "stops 不小于 1，batch_max 在 1 到 1000 之间")

    operators = {op.operator_id: op.kind for op in model.operators}
    for index, route in enumerate(model.routes):
        if operators.get(route.operator_id) != "bus":
            raise ConfigError(f"invalid traffic model: $.routes[{index}].operator_id = {route.operator_id!r}, "
                              f"expected a bus operator of $.operators",
                              f"流量模型无效：$.routes[{index}].operator_id = {route.operator_id!r}，应为公交运营单位")
        if len(route.stops) < 2 or route.buses < 1:
            raise ConfigError(f"invalid traffic model: route {route.route_id!r} needs at least 2 stops and 1 bus",
                              f"流量模型无效：线路 {route.route_id!r} 至少需要 2 个站点和 1 辆车")
    for index, site in enumerate(model.sites):
        if operators.get(site.operator_id) != site.kind:
            raise ConfigError(f"invalid traffic model: $.sites[{index}].operator_id = {site.operator_id!r}, "
                              f"expected a {site.kind} operator of $.operators",
                              f"流量模型无效：$.sites[{index}].operator_id = {site.operator_id!r}，应为 {site.kind} 类运营单位")
        if site.gates < 1:
            raise ConfigError(f"invalid traffic model: site {site.site_id!r} needs at least 1 gate",
                              f"流量模型无效：场所 {site.site_id!r} 至少需要 1 个闸机")
    if model.lost_cards + model.arrears_accounts >= model.holders:
        raise ConfigError(f"invalid traffic model: lost_cards + arrears_accounts = "
                          f"{model.lost_cards + model.arrears_accounts}, expected fewer than holders = {model.holders}",
                          "流量模型无效：挂失卡与欠费账户之和应小于持卡人数")
    return model


def load_model(path: str | os.PathLike[str] | None = None) -> TrafficModel:
    """Read a traffic model from ``path`` (TOML), or the built-in Yiyuan model when ``path`` is None."""
    if path is None:
        text = (importlib.resources.files("loadtests.models") / "yiyuan.toml").read_text(encoding="utf-8")
        source = "built-in loadtests/models/yiyuan.toml"
    else:
        try:
            text = pathlib.Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"traffic model not found: {path}", f"找不到流量模型文件：{path}",
                              "check the path given with --traffic / 请检查 --traffic 给出的路径") from exc
        source = str(path)
    try:
        model = msgspec.convert(tomllib.loads(text), TrafficModel)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"invalid traffic model in {source}: {exc}", f"流量模型无效（{source}）：{exc}") from exc
    return validate_model(model)


def write_spec(spec: RunSpec, path: pathlib.Path) -> None:
    path.write_bytes(msgspec.json.encode(spec))


def read_spec(path: str | os.PathLike[str] | None = None) -> RunSpec:
    """Read the run specification from ``path`` or from the file named by ``TAPGATE_LOADTEST_SPEC``."""
    if path is None:
        path = os.environ.get(SPEC_ENV)
        if not path:
            raise ConfigError(f"{SPEC_ENV} is not set: run the load test through `tapgate loadtest`, "
                              f"or set it to a run specification written by `tapgate loadtest --write-spec`",
                              f"未设置 {SPEC_ENV}：请通过 `tapgate loadtest` 运行负载测试")
    return msgspec.json.decode(pathlib.Path(path).read_bytes(), type=RunSpec)
