"""Build the compiled fast path.

Environment variables read at build time:

- ``TAPGATE_NO_EXTENSIONS=1`` skips the Cython extensions. The package then
  runs on the pure-Python twin of the fast path (select it at run time with
  ``TAPGATE_FASTPATH=python``).
- ``TAPGATE_DEBUG=1`` writes Cython's HTML annotation next to each ``.pyx``,
  enables line tracing (for coverage and profilers) and keeps C asserts.
"""

import os
import pathlib
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
NO_EXTENSIONS = os.environ.get("TAPGATE_NO_EXTENSIONS", "") not in ("", "0")
DEBUG = os.environ.get("TAPGATE_DEBUG", "") not in ("", "0")

FIX = (
    "Install a C compiler and the Python headers (on Debian: apt-get install gcc python3-dev), "
    "and Cython (pip install 'Cython>=3'), or set TAPGATE_NO_EXTENSIONS=1 to install the "
    "pure-Python fast path and run it with TAPGATE_FASTPATH=python."
)


class BuildExt(build_ext):
    """Cythonize ``fastpath/*.pyx`` and fail with a message that names the fix."""

    def finalize_options(self):
        if self.distribution.ext_modules:
            try:
                from Cython.Build import cythonize
            except ImportError as exc:
                raise SystemExit(f"tapgate: Cython is missing ({exc}). {FIX}") from exc

            directives = {"language_level": "3", "embedsignature": True}
            if DEBUG:
                directives.update(linetrace=True, boundscheck=True, wraparound=True)
            else:
                directives.update(boundscheck=False, wraparound=False)
            self.distribution.ext_modules = cythonize(
                self.distribution.ext_modules,
                compiler_directives=directives,
                annotate=DEBUG,
            )
        super().finalize_options()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # setuptools raises several unrelated types here
            raise SystemExit(f"tapgate: building the fast path failed: {exc}. {FIX}") from exc


def extensions():
    if NO_EXTENSIONS:
        return []
    from setuptools import Extension

    macros = []
    if DEBUG:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    else:
        macros.append(("NDEBUG", "1"))
    found = []
    for pyx in sorted((HERE / "fastpath").glob("*.pyx")):
        name = "fastpath." + pyx.stem
        found.append(
            Extension(
                name,
                [str(pyx.relative_to(HERE))],
                define_macros=macros,
                extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
                libraries=["dl"] if sys.platform.startswith("linux") else [],
            )
        )
    return found


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
