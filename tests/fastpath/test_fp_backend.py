"""The compiled module agrees with wire.py, loads libsodium, and is chosen by TAPGATE_FASTPATH."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastpath import _sodium, _verify, wire


def test_compiled_layout_matches_wire() -> None:
    for name, value in _verify.wire_constants().items():
        assert getattr(wire, name) == value, name


def test_pynacl_libsodium_preferred() -> None:
    import nacl._sodium

    # The twin checks signatures with PyNaCl's libsodium, so the compiled module loads the same library.
    assert _sodium.library_path == nacl._sodium.__file__


def test_blake2b_matches_hashlib() -> None:
    for data in (b"", b"a", bytes(range(256)) * 3):
        assert _sodium.blake2b(data) == wire.digest(data)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)


@pytest.mark.parametrize(("setting", "expected"), [("", "compiled"), ("compiled", "compiled"),
                                                   ("python", "python"), ("Python", "python")])
def test_environment_selects_implementation(setting: str, expected: str) -> None:
    result = run_python("import fastpath; print(fastpath.IMPLEMENTATION)", TAPGATE_FASTPATH=setting)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_unknown_implementation_names_choices() -> None:
    result = run_python("import fastpath", TAPGATE_FASTPATH="rust")
    assert result.returncode != 0
    assert "use 'compiled' or 'python'" in result.stderr


def test_missing_library_names_fix() -> None:
    result = run_python("import fastpath", TAPGATE_LIBSODIUM="/nonexistent/libsodium.so")
    assert result.returncode != 0
    assert "cannot load libsodium" in result.stderr
    assert "TAPGATE_LIBSODIUM" in result.stderr


def test_system_library_when_pointed_at() -> None:
    import ctypes.util

    system = ctypes.util.find_library("sodium")
    if not system:
        pytest.skip("no system libsodium on this machine")
    code = "import fastpath._sodium as s; print(s.library_path, s.library_version())"
    result = run_python(code, TAPGATE_LIBSODIUM=system)
    assert result.returncode == 0, result.stderr
    path, version = result.stdout.split()
    assert path == system
    assert tuple(int(part) for part in version.split(".")) >= (1, 0, 18)


def test_missing_compiled_module_names_fix() -> None:
    # sys.modules[name] = None makes the import fail as if the extension had not been built.
    code = "import sys; sys.modules['fastpath._verify'] = None; import fastpath"
    result = run_python(code)
    assert result.returncode != 0
    assert "the compiled fast path (fastpath._verify) is not built" in result.stderr
    assert "TAPGATE_FASTPATH=python" in result.stderr


def test_twin_works_without_compiled_module() -> None:
    code = ("import sys; sys.modules['fastpath._verify'] = None; sys.modules['fastpath._sodium'] = None\n"
            "import fastpath\nfrom fastpath.issuer import IssuerKey, Phone\n"
            "key = IssuerKey.generate(1); ring = fastpath.KeyRing(); ring.add(1, key.public_key)\n"
            "phone = Phone.new(key, valid_from_ms=1000)\n"
            "print(fastpath.Verifier(ring).verify(2, phone.qr_text(5000).encode(), b'', 5000).reason_name)")
    result = run_python(code, TAPGATE_FASTPATH="python")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ACCEPTED"
