"""Fuzzing bank return files: any bytes end in parsed items or a documented error, never a crash.

``settlement.returns.read_return_file`` is the first thing an imported file
meets. Documented errors are :class:`InputFileError` (bad CSV, not UTF-8) and
:class:`SchemaValidationError` (XML that is not a valid camt.054.001.08).
Inputs: arbitrary bytes, mutated CSV and camt.054 files built from genuine
items, camt.054 files with arbitrary amounts and dates, and XML entity
tricks (an entity expansion bomb and an external entity naming a local file).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement.errors import InputFileError, SchemaValidationError
from settlement.returns import ReturnItem, build_camt054, items_to_csv, read_return_file
from tests.faults.conftest import examples

DOCUMENTED = (InputFileError, SchemaValidationError)
ITEMS = [
    ReturnItem("D20261201ICBC000001", "settled", 1234, None, dt.date(2026, 12, 3)),
    ReturnItem("D20261201ICBC000002", "rejected", 200, "AM04", dt.date(2026, 12, 3)),
    ReturnItem("C20261201ICBC000001", "settled", 98765, None, None),
]
CREATED = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.timezone.utc)
CAMT = build_camt054(ITEMS, message_id="RET-1", created_at=CREATED, account_number="1602000119000012345").encode()
CSV = items_to_csv(ITEMS).encode()


def read(data: bytes, name: str = "returns.dat") -> list[ReturnItem] | None:
    try:
        _, items = read_return_file(data, name)
    except DOCUMENTED as error:
        assert error.message_en and error.message_zh, error
        return None
    for item in items:
        assert item.outcome in ("settled", "rejected"), item
        assert isinstance(item.amount_fen, int) and item.amount_fen >= 0, item
    return items


@pytest.mark.parametrize("amount,booked", [(".0", "2026-12-03"), ("12.345", "2026-12-03"),
                                           ("12.34", "2026-12-03+08:00"), ("12.34", "2026-12-03Z")])
def test_camt054_xsd_valid_values_rejected(amount: str, booked: str) -> None:
    text = CAMT.decode().replace(">12.34<", f">{amount}<").replace(">2026-12-03<", f">{booked}<", 1)
    assert read(text.encode(), "returns.xml") is None


def test_genuine_files_parse() -> None:
    assert read(CAMT, "returns.xml") == ITEMS
    assert read(CSV, "returns.csv") == ITEMS


def mutate(data: bytes, draw) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        position = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del out[position:position + draw(st.integers(1, 30))]
        else:
            out[position:position] = draw(st.binary(min_size=1, max_size=20))
    return bytes(out)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    read(data)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_csv(data: st.DataObject) -> None:
    read(mutate(CSV, data.draw), "returns.csv")


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_camt054(data: st.DataObject) -> None:
    read(mutate(CAMT, data.draw), "returns.xml")


# Amount and date texts as a bank might write them, good and bad.
amount_texts = st.one_of(st.decimals(min_value=0, max_value=10**9, allow_nan=False, places=2).map(str),
                         st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{0,6})?\Z"), st.text(max_size=12))
date_texts = st.one_of(st.dates().map(dt.date.isoformat), st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z"),
                       st.text(max_size=12))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amount_texts, date_texts)
def test_camt054_with_arbitrary_amount_and_date(amount: str, booked: str) -> None:
    text = CAMT.decode()
    text = text.replace(">12.34<", f">{amount}<").replace(">2026-12-03<", f">{booked}<", 1)
    read(text.encode(), "returns.xml")


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.lists(st.text(max_size=12), min_size=0, max_size=7), max_size=6))
def test_csv_with_arbitrary_cells(rows: list[list[str]]) -> None:
    import csv
    import io

    out = io.StringIO()
    table = csv.writer(out)
    table.writerow(["end_to_end_id", "outcome", "amount_fen", "reason_code", "booked_on"])
    table.writerows(rows)
    read(out.getvalue().encode("utf-8", "surrogatepass"), "returns.csv")


ENTITY_BOMB = ('<?xml version="1.0"?>\n<!DOCTYPE Document [\n<!ENTITY a "aaaaaaaaaa">\n'
               + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
               + ']>\n<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08">&j;</Document>\n')
SECRET = "tapgate-secret-3f9a1c"


def external_entity(path: str) -> str:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE Document [<!ENTITY secret SYSTEM "file://{path}">]>\n'
            + CAMT.decode().split("?>", 1)[1].replace("RET-1</MsgId>", "&secret;</MsgId>", 1))


_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
from settlement.errors import InputFileError, SchemaValidationError
from settlement.returns import read_return_file
try:
    _, items = read_return_file(sys.stdin.buffer.read(), "returns.xml")
except (InputFileError, SchemaValidationError) as error:
    print("rejected", error.message_en[:300])
    sys.exit(0)
print("parsed", [item.end_to_end_id for item in items])
"""


MINIMAL_ENTITY = ('<?xml version="1.0"?>\n<!DOCTYPE Document [<!ENTITY a "RET-1">]>\n'
                  + CAMT.decode().split("?>", 1)[1].replace("RET-1</MsgId>", "&a;</MsgId>", 1))


def run_child(document: str) -> str:
    # A child process with 2 GiB of address space and 20 s: a bomb or a crash cannot take the suite down.
    finished = subprocess.run([sys.executable, "-c", _CHILD], input=document.encode(), capture_output=True,
                              timeout=20)
    assert finished.returncode == 0, (finished.returncode, finished.stderr.decode()[-2000:])
    return finished.stdout.decode()


def test_entity_bomb_rejected() -> None:
    assert run_child(ENTITY_BOMB).startswith("rejected")


def test_internal_entity_no_crash() -> None:
    # Internal entities are legal XML: the file may parse (to the same items) or be rejected, but not crash.
    output = run_child(MINIMAL_ENTITY)
    assert output.startswith("rejected") or output.startswith("parsed"), output


def test_external_entity_not_read(tmp_path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    output = run_child(external_entity(str(secret_file)))
    assert output.startswith(("rejected", "parsed")), output
    assert SECRET not in output
