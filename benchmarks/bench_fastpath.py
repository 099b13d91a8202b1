"""Cost of verifying one QR presentation: the fast path against raw libsodium verification.

Measured side by side in one run (group "fastpath"):

- ``raw_pynacl``: one Ed25519 verification through PyNaCl (``VerifyKey.verify``)
  of the message a phone signs for a QR code; the reference of the speed goal.
- ``raw_c_call``: the same verification through ``fastpath._sodium.verify_signature``,
  a Cython wrapper around the C function pointer: the signature check
  with the least Python around it.
- ``compiled_cached`` / ``compiled_new``: ``fastpath._verify`` on a returning
  rider (credential in the cache: one signature check) and on a new one
  (cache disabled: two signature checks).
- ``twin_cached`` / ``twin_new``: the same for the pure-Python twin.
- ``interleaved``: all six again, in alternating blocks of calls, so that the
  ratios hold even while other processes load the machine.

Run and print the ratios (results go to docs/benchmarks.md)::

    python -m pytest benchmarks/bench_fastpath.py --benchmark-json=/tmp/fastpath.json
    python benchmarks/bench_fastpath.py /tmp/fastpath.json
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from typing import Callable

import pytest

ROUNDS = 300
ITERATIONS = 50
INTERLEAVED_BLOCKS = 500
INTERLEAVED_CALLS = 10
NOW_MS = 1_780_243_200_000


@pytest.fixture(scope="module")
def scene():
    import nacl.signing

    import fastpath._verify as compiled
    import fastpath._verify_py as twin
    from fastpath import wire
    from fastpath.issuer import IssuerKey, Phone

    key = IssuerKey.from_seed(1, b"\x01" * 32)
    phone = Phone.new(key, valid_from_ms=NOW_MS - 86_400_000, holder_seed=b"\x02" * 32)
    envelope = phone.qr_envelope(NOW_MS)
    text = wire.QR_PREFIX + wire.base45_encode(envelope)
    body_digest = wire.digest(phone.credential[:wire.BODY_LEN])
    message = wire.qr_message(body_digest, NOW_MS, phone.counter)
    rings = {}
    for name, module in (("compiled", compiled), ("twin", twin)):
        ring = module.KeyRing()
        ring.add(1, key.public_key)
        rings[name] = (module, ring)
    return {
        "text": text,
        "message": message,
        "signature": envelope[-64:],
        "holder_key": phone.holder_public_key,
        "verify_key": nacl.signing.VerifyKey(phone.holder_public_key),
        "rings": rings,
    }


def run(benchmark, function, *args) -> None:
    benchmark.group = "fastpath"
    benchmark.pedantic(function, args=args, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=5)


def test_raw_pynacl(benchmark, scene) -> None:
    verify_key = scene["verify_key"]
    assert verify_key.verify(scene["message"], scene["signature"]) == scene["message"]
    run(benchmark, verify_key.verify, scene["message"], scene["signature"])


def test_raw_c_call(benchmark, scene) -> None:
    from fastpath import _sodium

    args = (scene["holder_key"], scene["message"], scene["signature"])
    assert _sodium.verify_signature(*args)
    run(benchmark, _sodium.verify_signature, *args)


@pytest.mark.parametrize("implementation", ["compiled", "twin"])
@pytest.mark.parametrize("cache", ["cached", "new"])
def test_verify(benchmark, scene, implementation: str, cache: str) -> None:
    module, ring = scene["rings"][implementation]
    verifier = module.Verifier(ring, cache_size=100_000 if cache == "cached" else 0)
    result = verifier.verify(2, scene["text"], b"", NOW_MS)
    assert result.accepted
    run(benchmark, verifier.verify, 2, scene["text"], b"", NOW_MS)
    # A returning rider costs one signature check, a new credential two.
    stats = verifier.stats()
    if cache == "cached":
        assert stats["cache_misses"] == 1
        assert stats["signature_checks"] == stats["cache_hits"] + 2
    else:
        assert stats["cache_hits"] == 0
        assert stats["signature_checks"] == 2 * stats["cache_misses"]


def interleave(cases: dict[str, Callable[[], object]], blocks: int, calls: int) -> dict[str, list[float]]:
    """Time ``calls`` calls of each case per block, rotating the cases; return µs per call per block.

    Cases measured in the same block share the machine's state of that
    moment, so ratios taken block by block cancel the drift that other
    processes on a shared machine cause between separate benchmarks.
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for block in range(blocks):
        order = names[block % len(names):] + names[:block % len(names)]
        for name in order:
            function = cases[name]
            start = time.perf_counter_ns()
            for _ in range(calls):
                function()
            samples[name].append((time.perf_counter_ns() - start) / calls / 1000)
    return samples


def test_interleaved(benchmark, scene) -> None:
    """Measure all cases block by block and store per-block ratios in the JSON's extra_info."""
    from fastpath import _sodium

    text, message, signature = scene["text"], scene["message"], scene["signature"]
    holder_key, verify_key = scene["holder_key"], scene["verify_key"]
    verifiers = {}
    for implementation in ("compiled", "twin"):
        module, ring = scene["rings"][implementation]
        verifiers[f"{implementation}_cached"] = module.Verifier(ring)
        verifiers[f"{implementation}_new"] = module.Verifier(ring, cache_size=0)
    cases: dict[str, Callable[[], object]] = {
        "raw_pynacl": lambda: verify_key.verify(message, signature),
        "raw_c_call": lambda: _sodium.verify_signature(holder_key, message, signature),
    }
    for name, verifier in verifiers.items():
        cases[name] = functools.partial(verifier.verify, 2, text, b"", NOW_MS)

    def measure() -> dict[str, list[float]]:
        return interleave(cases, blocks=INTERLEAVED_BLOCKS, calls=INTERLEAVED_CALLS)

    benchmark.group = "fastpath-interleaved"
    samples = benchmark.pedantic(measure, rounds=1, iterations=1)
    blocks = range(INTERLEAVED_BLOCKS)
    benchmark.extra_info["median_us"] = {name: statistics.median(values) for name, values in samples.items()}
    benchmark.extra_info["cached_over_raw_pynacl"] = statistics.median(
        samples["compiled_cached"][i] / samples["raw_pynacl"][i] for i in blocks)
    benchmark.extra_info["cached_over_raw_c_call"] = statistics.median(
        samples["compiled_cached"][i] / samples["raw_c_call"][i] for i in blocks)
    benchmark.extra_info["own_work_compiled_us"] = statistics.median(
        samples["compiled_cached"][i] - samples["raw_c_call"][i] for i in blocks)
    benchmark.extra_info["own_work_twin_us"] = statistics.median(
        samples["twin_cached"][i] - samples["raw_c_call"][i] for i in blocks)


def report(path: str) -> str:
    """Return a Markdown table of medians and the goal ratios from a pytest-benchmark JSON file."""
    document = json.loads(open(path, encoding="utf-8").read())
    medians = {}
    interleaved = {}
    for bench in document["benchmarks"]:
        if bench["name"] == "test_interleaved":
            interleaved = bench["extra_info"]
            continue
        name = bench["name"].removeprefix("test_")
        if bench["params"]:
            name = f"{bench['params']['implementation']}_{bench['params']['cache']}"
        medians[name] = bench["stats"]["median"] * 1e6
    lines = []
    if {"raw_pynacl", "raw_c_call", "compiled_cached", "compiled_new", "twin_cached"} <= medians.keys():
        lines += ["| case | median µs per presentation |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in medians.items()]
        raw, c_call = medians["raw_pynacl"], medians["raw_c_call"]
        own_compiled = medians["compiled_cached"] - c_call
        own_twin = medians["twin_cached"] - c_call
        lines += [
            "",
            f"- compiled_cached / raw_pynacl = {medians['compiled_cached'] / raw:.3f} (goal ≤ 1.10)",
            f"- compiled_cached / raw_c_call = {medians['compiled_cached'] / c_call:.3f}",
            f"- compiled_new / raw_pynacl = {medians['compiled_new'] / raw:.3f}",
            f"- twin_cached / raw_pynacl = {medians['twin_cached'] / raw:.3f}",
            f"- own work beyond the signature (cached minus raw_c_call): compiled {own_compiled:.2f} µs, "
            f"twin {own_twin:.2f} µs, ratio {own_compiled / own_twin:.3f} (goal ≤ 0.25)",
        ]
    if interleaved:
        own_compiled, own_twin = interleaved["own_work_compiled_us"], interleaved["own_work_twin_us"]
        lines += [
            "",
            f"Interleaved ({INTERLEAVED_BLOCKS} blocks of {INTERLEAVED_CALLS} calls per case, medians of "
            "per-block values):",
            "",
            "| case | median µs per presentation |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {value:.2f} |" for name, value in interleaved["median_us"].items()]
        lines += [
            "",
            f"- compiled_cached / raw_pynacl = {interleaved['cached_over_raw_pynacl']:.3f} (goal ≤ 1.10)",
            f"- compiled_cached / raw_c_call = {interleaved['cached_over_raw_c_call']:.3f}",
            f"- own work beyond the signature: compiled {own_compiled:.2f} µs, twin {own_twin:.2f} µs, "
            f"ratio {own_compiled / own_twin:.3f} (goal ≤ 0.25)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1]))
