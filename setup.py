"""mmgate's native parts, all optional: where no C compiler or Python
headers are found, mmgate installs without them and runs the same Python,
interpreted, with the same results, slower.

* mmgate/smtp/_text.c, the framer's reader of message text, and
  mmgate/mailman/_spoolio.c, the file system half of the Mailman spool
  writer: hand-written, each with its Python twin (mmgate/smtp/framing.py,
  mmgate/mailman/spool.py).
* The sans-I/O protocol core (``CORE`` below), compiled from its typed
  Python by mypyc: every command of every session runs through it, and
  interpreted it was most of a small message's cost (benchmarks/smtpd_path.py).
  The source is the same either way; ``MMGATE_PURE_PYTHON=1`` at run time
  imports it from source again (tox's second environment tests that), and
  ``MMGATE_NO_MYPYC=1`` at build time leaves it uncompiled.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HAND_WRITTEN = [
    Extension(
        "mmgate.smtp._text",
        ["mmgate/smtp/_text.c"],
        extra_compile_args=["-O2"],
        optional=True,
    ),
    Extension(
        "mmgate.mailman._spoolio",
        ["mmgate/mailman/_spoolio.c"],
        extra_compile_args=["-O2"],
        optional=True,
    ),
]

#: The modules mypyc compiles: the protocol core, which imports nothing
#: above it (see mmgate/smtp/__init__.py).
CORE = [
    "mmgate/smtp/errors.py",
    "mmgate/smtp/events.py",
    "mmgate/smtp/framing.py",
    "mmgate/smtp/limits.py",
    "mmgate/smtp/paths.py",
    "mmgate/smtp/replies.py",
    "mmgate/smtp/session.py",
    "mmgate/smtp/state.py",
]


def compiled_core() -> list[Extension]:
    """mypyc's extensions for ``CORE``. The type check follows the core's
    imports up into the rest of mmgate (its package's ``__init__``), whose
    third-party imports a build environment does not have: what is not
    compiled is read silently, the compiled modules are checked as strictly
    as the linters check them."""
    if os.environ.get("MMGATE_NO_MYPYC"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # (a build without its build requirements)
        return []
    extensions = mypycify(
        ["--follow-imports=silent", *CORE], opt_level="3", group_name="mmgate.smtp._core"
    )
    for extension in extensions:
        extension.optional = False  # all or none: see BuildExt
    return extensions


class BuildExt(build_ext):
    """The compiled core is built whole or not at all: each compiled module
    is a small shim over one shared library, and a shim without its library
    would shadow its ``.py`` with an import error. mypyc's part is made only
    when extensions are built, not each time setup.py is read (for the
    build's requirements, for its metadata)."""

    def finalize_options(self) -> None:
        modules = self.distribution.ext_modules or []
        if not any(not e.optional for e in modules):
            self.distribution.ext_modules = [*modules, *compiled_core()]
        super().finalize_options()

    def build_extensions(self) -> None:
        core = {e.name for e in self.extensions if not e.optional}
        try:
            for extension in self.extensions:
                if extension.name in core:
                    self.build_extension(extension)
        except Exception as exc:  # (whatever the compiler failed on)
            sys.stderr.write(f"mmgate: the protocol core stays interpreted: {exc}\n")
            for extension in self.extensions:
                if extension.name in core:
                    path = self.get_ext_fullpath(extension.name)
                    if os.path.exists(path):
                        os.remove(path)
        for extension in self.extensions:
            if extension.name not in core:
                with self._filter_build_errors(extension):
                    self.build_extension(extension)


setup(ext_modules=HAND_WRITTEN, cmdclass={"build_ext": BuildExt})
