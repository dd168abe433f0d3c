"""Flower's entry points for ``flwr run .``: FloRec's ServerApp and ClientApp.

``pyproject.toml`` names ``flower_entry:serverapp`` and ``flower_entry:clientapp``. A FAB (the
folder that ``flwr run`` ships to the SuperExec) carries FloRec's source folders but is not an
installed package, so this module binds the package name ``florec`` to the FAB's own folder
before it imports an app: the code that runs is the code that was submitted, in a simulation, in
a deployment image without FloRec installed, and beside an editable or a wheel install alike.
Each app is imported only when asked for (PEP 562), so a node never imports the ServerApp.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

#: the apps, made on first access by ``__getattr__`` (Flower's ``flwr run`` checks this list)
__all__ = ["serverapp", "clientapp"]  # noqa: F822 - defined by __getattr__ below

_ROOT = Path(__file__).resolve().parent
_APPS = {"serverapp": "florec.server.app", "clientapp": "florec.client.app"}


def _bind_florec_to_this_folder() -> None:
    """Import ``florec`` from this folder unless a ``florec`` is imported already."""
    if "florec" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "florec", _ROOT / "__init__.py", submodule_search_locations=[str(_ROOT)])
    if spec is None or spec.loader is None:  # pragma: no cover - the file sits beside this one
        raise ImportError(f"cannot load FloRec from {_ROOT}; reinstall it with `pip install .`")
    module = importlib.util.module_from_spec(spec)
    sys.modules["florec"] = module
    spec.loader.exec_module(module)


def __getattr__(name: str) -> object:
    """Return the ServerApp (``serverapp``) or the ClientApp (``clientapp``)."""
    if name not in _APPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _bind_florec_to_this_folder()
    return importlib.import_module(_APPS[name]).app
