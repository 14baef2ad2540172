"""Methods and datasets from outside the package: plugins, imported once before configuration.

A plugin is any importable module that registers methods (:func:`mmssl.methods.register_method`)
or datasets (:func:`mmssl.data.register_dataset`) when imported. mmssl imports

* every module named in the ``MMSSL_PLUGINS`` environment variable (comma-separated, e.g.
  ``MMSSL_PLUGINS=my_lab.vicreg``), and
* every entry point of the ``mmssl.plugins`` group of installed distributions
  (``[project.entry-points."mmssl.plugins"] vicreg = "my_lab.vicreg"``),

so ``mmssl run --method vicreg`` works without changing mmssl. Modules inside
:mod:`mmssl.methods` and :mod:`mmssl.data` are found without any of this (each package imports
all of its modules).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points
from types import ModuleType

from mmssl.errors import ConfigError

__all__ = ["ENVIRONMENT_VARIABLE", "ENTRY_POINT_GROUP", "import_submodules", "load_plugins"]

ENVIRONMENT_VARIABLE = "MMSSL_PLUGINS"
ENTRY_POINT_GROUP = "mmssl.plugins"
_loaded: set[str] = set()


def import_submodules(package: ModuleType) -> None:
    """Import every module of ``package`` (not recursive), so each can register itself."""
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def load_plugins() -> list[str]:
    """Import the plugins of the environment variable and of the entry points (once each).

    Raises:
        ConfigError: a plugin module that cannot be imported (named, with the reason).
    """
    names = [n.strip() for n in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if n.strip()]
    names += [point.value for point in entry_points(group=ENTRY_POINT_GROUP)]
    loaded = []
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name.split(":")[0])
        except Exception as error:  # noqa: BLE001 - any failure of a user's module is reported
            raise ConfigError(f"plugin {name!r} (from {ENVIRONMENT_VARIABLE} or the "
                              f"{ENTRY_POINT_GROUP} entry points) cannot be imported: "
                              f"{type(error).__name__}: {error}") from None
        _loaded.add(name)
        loaded.append(name)
    return loaded
