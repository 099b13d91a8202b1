"""The demo's county: operators, devices, holders and bank accounts, made from one seed.

Everything a day of traffic needs is made here in memory, deterministically
from ``seed`` (the same seed gives the same holders, tokens, entitlements and
account numbers), and then registered in PostgreSQL by :mod:`tapgate.demo.provision`
through the product's own tools. Device secrets are the exception: the device
registry makes them, as it would in production.

No personal data: holders are pseudonymous tokens with entitlements. Bank
account numbers start with 9999, a prefix the demo reserves for invented
numbers, so none of them looks like an account of a real bank.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import nacl.signing

from fastpath.entitlements import Entitlements, PriorityGroup
from fastpath.issuer import Card, IssuerKey, Phone, issue_credential
from gateway.timeutil import LOCAL_TZ
from loadtests.scenario import TrafficModel

DAY_MS = 86_400_000
ISSUER_KEY_ID = 1

# Rider categories of the demo population with their share of holders. The
# names are the demo's own; the rule set decides what each one pays.
CATEGORY_SHARES: dict[str, float] = {
    "adult": 0.52,
    "elderly-60-64": 0.08,
    "elderly-65+": 0.16,
    "disabled": 0.04,
    "priority": 0.04,
    "student": 0.11,
    "child": 0.05,
}
# Cooperating banks of the card issuer's export (invented codes and names).
BANKS = (("DEMOBANKA", "示例农村商业银行", "Example Rural Commercial Bank"),
         ("DEMOBANKB", "示例城市商业银行", "Example City Commercial Bank"))
# Share of holders whose account is missing from the card issuer's export:
# their debits are held until the account is known.
NO_ACCOUNT_SHARE = 0.01
# Fee per operator credit, in basis points of the amount.
FEE_BP = {"bus": 0, "scenic": 60, "venue": 0}


@dataclasses.dataclass(eq=False)
class Holder:
    """One cardholder: a social security card and a phone with the service code."""

    index: int
    category: str
    # "ok", "lost" (the card is reported lost) or "arrears" (the account is).
    status: str
    holder_token: bytes
    account_token: bytes
    card: Card
    phone: Phone
    bank_code: str | None
    account_number: str | None = dataclasses.field(repr=False)


@dataclasses.dataclass(eq=False)
class DemoDevice:
    """A validator on a bus route or a gate at a site; ``secret`` is filled in at registration."""

    device_id: str
    operator_id: str
    sector: str  # "urban", "county", "scenic" or "venue"
    route_id: str | None = None
    site_id: str | None = None
    stops: tuple[str, ...] = ()
    registered: bool = True
    secret: bytes = dataclasses.field(default=b"", repr=False)

    @property
    def kind(self) -> str:
        return "validator" if self.route_id else "gate"


@dataclasses.dataclass
class World:
    day: dt.date
    issuer: IssuerKey
    # Same key id, other key: credentials it signs must fail the issuer signature check.
    rogue_issuer: IssuerKey
    model: TrafficModel
    devices: list[DemoDevice]
    unknown_devices: list[DemoDevice]
    holders: list[Holder]
    rogue_holders: list[Holder]

    def holders_with(self, status: str) -> list[Holder]:
        return [h for h in self.holders if h.status == status]

    def devices_in(self, sector: str) -> list[DemoDevice]:
        return [d for d in self.devices if d.sector == sector]


def _birth_date(day: dt.date, age: int, rng: random.Random) -> dt.date:
    """Return a birth date that makes the holder exactly ``age`` years old on ``day``."""
    try:
        anniversary = day.replace(year=day.year - age)
    except ValueError:  # 29 February in a year without it
        anniversary = day.replace(year=day.year - age, day=28)
    return anniversary - dt.timedelta(days=rng.randrange(1, 360))


def entitlements_for(category: str, day: dt.date, rng: random.Random) -> Entitlements:
    """Return entitlements that put a holder in ``category`` on ``day`` (local date)."""
    later = day + dt.timedelta(days=2 * 365)
    if category == "elderly-60-64":
        return Entitlements(birth_date=_birth_date(day, rng.randrange(60, 65), rng))
    if category == "elderly-65+":
        return Entitlements(birth_date=_birth_date(day, rng.randrange(65, 91), rng))
    if category == "disabled":
        return Entitlements(birth_date=_birth_date(day, rng.randrange(18, 60), rng), disability_until=later)
    if category == "priority":
        group = rng.choice([PriorityGroup.DISABLED_SERVICE_MEMBER, PriorityGroup.BEREAVED_MILITARY_FAMILY,
                            PriorityGroup.VETERAN, PriorityGroup.SERVING_MILITARY_FAMILY])
        return Entitlements(birth_date=_birth_date(day, rng.randrange(25, 60), rng), priority_until=later,
                            priority_group=int(group))
    if category == "student":
        return Entitlements(birth_date=_birth_date(day, rng.randrange(12, 23), rng), student_until=later)
    if category == "child":
        return Entitlements(birth_date=_birth_date(day, rng.randrange(3, 6), rng))
    return Entitlements(birth_date=_birth_date(day, rng.randrange(22, 60), rng))


def _fake_account_number(rng: random.Random) -> str:
    return "9999" + "".join(str(rng.randrange(10)) for _ in range(15))


def make_holder(issuer: IssuerKey, index: int, category: str, status: str, entitlements: Entitlements,
                day: dt.date, rng: random.Random, *, with_account: bool = True) -> Holder:
    """Issue a card credential and a phone credential (each with its own holder key) for one holder."""
    start = dt.datetime.combine(day - dt.timedelta(days=30), dt.time(0, 0), tzinfo=LOCAL_TZ)
    valid_from_ms = int(start.timestamp()) * 1000
    holder_token = rng.randbytes(16)
    account_token = rng.randbytes(16)
    media = []
    for holder_class in (Card, Phone):
        seed = rng.randbytes(32)
        credential = issue_credential(
            issuer, holder_token=holder_token, account_token=account_token, entitlements=entitlements,
            valid_from_ms=valid_from_ms, valid_until_ms=valid_from_ms + 2 * 365 * DAY_MS,
            holder_public_key=bytes(nacl.signing.SigningKey(seed).verify_key),
            credential_id=rng.randbytes(16), issued_at_ms=valid_from_ms)
        media.append(holder_class(credential, seed))
    card, phone = media
    bank = rng.choice(BANKS)[0] if with_account else None
    number = _fake_account_number(rng) if with_account else None
    return Holder(index, category, status, holder_token, account_token, card, phone, bank, number)


def _devices(model: TrafficModel) -> list[DemoDevice]:
    devices = []
    for route in model.routes:
        sector = "county" if route.fare_structure == "area" else "urban"
        for bus in range(1, route.buses + 1):
            devices.append(DemoDevice(f"bus-{route.route_id}-v{bus:02d}", route.operator_id, sector,
                                      route_id=route.route_id, stops=tuple(route.stops)))
    for site in model.sites:
        for gate in range(1, site.gates + 1):
            devices.append(DemoDevice(f"gate-{site.site_id}-{gate:02d}", site.operator_id, site.kind,
                                      site_id=site.site_id))
    return devices


def _category_mix(count: int, rng: random.Random) -> list[str]:
    """Return ``count`` categories in the shares of :data:`CATEGORY_SHARES`, shuffled."""
    names = list(CATEGORY_SHARES)
    mix: list[str] = []
    for name in names:
        mix.extend([name] * round(count * CATEGORY_SHARES[name]))
    while len(mix) < count:
        mix.append("adult")
    mix = mix[:count]
    rng.shuffle(mix)
    return mix


def build_world(model: TrafficModel, day: dt.date, holders: int, seed: int) -> World:
    """Make the county for business ``day``: issuer keys, devices and ``holders`` holders."""
    rng = random.Random(seed)
    issuer = IssuerKey.from_seed(ISSUER_KEY_ID, rng.randbytes(32))
    rogue = IssuerKey.from_seed(ISSUER_KEY_ID, rng.randbytes(32))

    lost = max(2, holders // 200)
    arrears = max(2, holders // 400)
    statuses = ["lost"] * lost + ["arrears"] * arrears + ["ok"] * (holders - lost - arrears)
    rng.shuffle(statuses)
    population = []
    for index, (category, status) in enumerate(zip(_category_mix(holders, rng), statuses)):
        entitlements = entitlements_for(category, day, rng)
        with_account = status != "ok" or rng.random() >= NO_ACCOUNT_SHARE
        population.append(make_holder(issuer, index, category, status, entitlements, day, rng,
                                      with_account=with_account))

    # One holder turns 65 on the demo day: the age rule applies from that day on.
    birthday = next((h for h in population if h.status == "ok" and h.category == "elderly-60-64"), None)
    if birthday is not None:
        turning = Entitlements(birth_date=_birth_date(day, 65, rng) if (day.month, day.day) == (2, 29)
                               else day.replace(year=day.year - 65))
        population[birthday.index] = make_holder(issuer, birthday.index, "elderly-65+", "ok", turning, day, rng)

    rogue_holders = [make_holder(rogue, n, "adult", "ok", entitlements_for("adult", day, rng), day, rng)
                     for n in range(8)]
    devices = _devices(model)
    unknown = [DemoDevice(f"bus-9{n}-v01", "unknown", "urban", route_id=f"9{n}", registered=False,
                          secret=rng.randbytes(32)) for n in range(3)]
    return World(day, issuer, rogue, model, devices, unknown, population, rogue_holders)
