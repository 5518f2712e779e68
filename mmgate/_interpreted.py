"""``MMGATE_PURE_PYTHON=1``: mmgate's modules are imported from their
source, never from what mypyc compiled of them (setup.py), so that the
interpreted fallback, what a machine without a C compiler runs, is the code
under test (tox's second environment) or under measurement."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds an ``mmgate`` module's ``.py`` ahead of its extension module."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not name.startswith("mmgate.") or path is None:
            return None
        leaf = name.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(name, source)
        return None


def install() -> None:
    if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())
