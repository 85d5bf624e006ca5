"""A lazy `kubernetes_asyncio.client`: each class of the generated client is imported at the first use of
its name, not all of them at import.

kubernetes_asyncio imports every one of its generated API and model classes (about 60 APIs and 800
models) as soon as anything of it is imported: about 60 MiB of the operator's RSS for the dozen classes it
uses (docs/architecture.md, "Costs"). The synchronous `kubernetes` client (37+) is lazy by itself.
`install()` puts stand-ins for its three packages (`client`, `client.api`, `client.models`) in sys.modules
that resolve a name from the package's own `__init__.py` (`from <module> import <Name>`) when it is first
read, and leave every submodule importable as usual. Call it before anything imports the client; once it
is imported, or if its `__init__.py` files do not have that form, it does nothing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

CLIENT = "kubernetes_asyncio"
LAZY_PACKAGES = ("client", "client.api", "client.models")
_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)$", re.MULTILINE)


def _stand_in(name: str, directory: Path) -> types.ModuleType:
    """A package module NAME in DIRECTORY whose top-level names are imported when first read."""
    init = directory / "__init__.py"
    source = init.read_text()
    origin = {attribute: module for module, attribute in _IMPORT.findall(source)}
    spec = importlib.machinery.ModuleSpec(name, None, origin=str(init), is_package=True)
    spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(init)
    version = re.search(r'^__version__ = "([^"]+)"$', source, re.MULTILINE)
    if version:
        module.__version__ = version.group(1)  # type: ignore[attr-defined]

    def __getattr__(attribute: str) -> Any:
        if attribute not in origin:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        value = getattr(importlib.import_module(origin[attribute]), attribute)
        setattr(module, attribute, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(origin) | set(vars(module)))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    module.__all__ = sorted(origin)  # type: ignore[attr-defined]
    return module


def install() -> None:
    if any(name == CLIENT or name.startswith(f"{CLIENT}.") for name in sys.modules):
        return  # already imported (or being imported): the real packages stay
    found = importlib.util.find_spec(CLIENT)  # finds the package without running it
    if found is None or found.origin is None:
        return
    root = Path(found.origin).parent
    modules = {}
    for package in LAZY_PACKAGES:
        directory = root.joinpath(*package.split("."))
        if not (directory / "__init__.py").is_file():
            return
        module = _stand_in(f"{CLIENT}.{package}", directory)
        if not module.__all__:
            return  # another layout: nothing is replaced
        modules[package] = module
    for package, module in modules.items():
        sys.modules[module.__name__] = module
        parent, _, leaf = package.rpartition(".")
        if parent:
            setattr(modules[parent], leaf, module)
