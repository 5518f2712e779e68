"""Finding and building the plugins the configuration names.

A ``[[plugins]]`` table names a plugin by an entry point of the
``mmgate.plugins`` group (how installed packages, the first-party ones in
``plugins/`` included, announce theirs) or by a dotted path
(``package.module:Class`` or ``package.module.Class``); its other keys are
the plugin's options, passed to the factory as keyword arguments. Every
failure is one line naming the file and the table.
"""

from __future__ import annotations

import contextlib
import importlib
from importlib.metadata import entry_points
from typing import Any

from mmgate.config import ConfigError, PluginSpec

GROUP = "mmgate.plugins"


def find_factory(name: str, where: str) -> Any:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise ConfigError(f"{where}: plugin {name!r} cannot be loaded: {exc}") from None
    if ":" in name:
        module_name, _, attr = name.partition(":")
    elif "." in name:
        module_name, _, attr = name.rpartition(".")
    else:
        known = ", ".join(sorted(ep.name for ep in entry_points(group=GROUP))) or "none"
        raise ConfigError(
            f"{where}: no plugin named {name!r} (installed: {known}; or give module:Class)"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: plugin {name!r} cannot be loaded: {exc}") from None


def build(spec: PluginSpec) -> object:
    factory = find_factory(spec.name, spec.where)
    try:
        plugin = factory(**spec.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{spec.where} ({spec.name}): {exc}") from None
    if getattr(plugin, "name", None) is None:
        with contextlib.suppress(AttributeError):  # __slots__: it keeps its class name
            plugin.name = spec.name
    return plugin


def load(specs: tuple[PluginSpec, ...]) -> list[object]:
    """The plugins, built in the order the configuration gives."""
    return [build(spec) for spec in specs]
