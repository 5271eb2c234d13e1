"""The C extension `watchdog._spawn`; everything else is in pyproject.toml.

Declared here rather than in pyproject.toml, where setuptools still calls
`[tool.setuptools.ext-modules]` experimental and says so on every build.
"""

from __future__ import annotations

import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

# Functions started on C threads, off the event loop (watchdog/_spawn.c). Optional:
# without a C compiler the install goes on, and functions start on the loop.
# bundle/build.py compiles it with the same flags.
SPAWN = Extension(
    "watchdog._spawn",
    sources=["watchdog/_spawn.c"],
    optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
)


class BuildExtension(build_ext):
    """An optional extension that failed to build says so in a warning: pip shows a
    build's warnings even with --quiet, where it hides the compiler's output."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, BaseError) as error:
            if not ext.optional:
                raise
            warnings.warn(
                f"{ext.name} was not built (the C compiler failed: {error}). The gateway "
                "works, but starts functions on its event loop instead of C threads "
                "(slower under load). To build it, install a C compiler and Python's "
                "headers (Debian: apt-get install gcc python3-dev) and install again.",
                stacklevel=1,
            )


setup(ext_modules=[SPAWN], cmdclass={"build_ext": BuildExtension})
