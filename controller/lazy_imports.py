"""Imports that the operator's libraries make eagerly and the operator never uses, deferred to the first
use of a name (docs/architecture.md, "Costs"). Each stand-in is a module in sys.modules whose missing
attributes are resolved when first read; every submodule stays importable as usual. Call `install()`
before anything imports these libraries; whatever is already imported, or laid out otherwise than
expected, is left as it is.

- `kubernetes_asyncio.client` imports every one of its generated API and model classes (about 60 APIs and
  800 models) as soon as anything of it is imported: about 60 MiB of RSS for the dozen classes the operator
  uses. Its three packages (`client`, `client.api`, `client.models`) get stand-ins that resolve a name from
  the package's own `__init__.py` (`from <module> import <Name>`) when it is first read.
- `kubernetes` (the synchronous client, which the CLI uses): kopf imports `kubernetes.client` if it can, to
  recognise its model classes, and the package's `__init__.py` imports all of `config`, `stream`, `watch`,
  `dynamic`, ... with them (yaml, requests, oauthlib, websocket): about 16 MiB. Its stand-in imports a
  subpackage when it is first named (`kubernetes.client` is lazy by itself).
- `cel.cli` and `httpx._main`: the command-line interfaces of the CEL library (typer, prompt_toolkit, rich)
  and of httpx (pygments' lexers, rich's syntax and progress), which their `__init__.py` import: about 8 and
  11 MiB. Each stand-in runs the module when one of its names is first read, or its `main` first called.
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
SYNC_CLIENT = "kubernetes"
# Command-line interfaces that their package's __init__.py imports: (package, module, functions it reads).
DEFERRED = (("cel", "cli", ()), ("httpx", "_main", ("main",)))
LAZY_PACKAGES = ("client", "client.api", "client.models")
_IMPORT = re.compile(r"^from ([\w.]+) import (\w+)$", re.MULTILINE)


def _package_module(name: str, directory: Path) -> tuple[types.ModuleType, str]:
    """An empty package module NAME in DIRECTORY (its submodules importable, its `__init__.py` not run,
    its `__version__` copied), and the source of that `__init__.py`."""
    init = directory / "__init__.py"
    source = init.read_text()
    spec = importlib.machinery.ModuleSpec(name, None, origin=str(init), is_package=True)
    spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(init)
    version = re.search(r'^__version__ = "([^"]+)"$', source, re.MULTILINE)
    if version:
        module.__version__ = version.group(1)  # type: ignore[attr-defined]
    return module, source


def _stand_in(name: str, directory: Path) -> types.ModuleType:
    """A package module NAME in DIRECTORY whose top-level names are imported when first read."""
    module, source = _package_module(name, directory)
    origin = {attribute: submodule for submodule, attribute in _IMPORT.findall(source)}

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
    _install_async_client()
    _install_sync_client()
    for package, leaf, functions in DEFERRED:
        _defer(package, leaf, functions)


def _imported(package: str) -> bool:
    return any(name == package or name.startswith(f"{package}.") for name in sys.modules)


def _package_directory(package: str) -> Path | None:
    """Where top-level PACKAGE is, found without running it."""
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None or not found.origin.endswith("__init__.py"):
        return None
    return Path(found.origin).parent


def _install_sync_client() -> None:
    """`kubernetes` without its `__init__.py`: `from kubernetes import config` and `kubernetes.client`
    import the subpackage they name, and nothing else."""
    if _imported(SYNC_CLIENT):
        return
    directory = _package_directory(SYNC_CLIENT)
    if directory is None:
        return
    module, _ = _package_module(SYNC_CLIENT, directory)

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__") or not (directory / attribute).is_dir():
            raise AttributeError(f"module {SYNC_CLIENT!r} has no attribute {attribute!r}")
        return importlib.import_module(f"{SYNC_CLIENT}.{attribute}")  # the import binds it on the module

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[SYNC_CLIENT] = module


def _defer(package: str, leaf: str, functions: tuple[str, ...] = ()) -> None:
    """PACKAGE.LEAF as a module that runs when one of its names is first read, or one of its FUNCTIONS
    (which the package reads at import) is first called."""
    name = f"{package}.{leaf}"
    if _imported(package):
        return
    directory = _package_directory(package)
    source = directory / f"{leaf}.py" if directory else None
    if source is None or not source.is_file():
        return
    loader = importlib.machinery.SourceFileLoader(name, str(source))
    spec = importlib.util.spec_from_file_location(name, source, loader=loader)
    if spec is None:
        return
    module = importlib.util.module_from_spec(spec)
    loaded: list[bool] = []

    def load() -> None:
        if not loaded:  # once: from then on it is the real module
            loaded.append(True)
            del module.__getattr__
            loader.exec_module(module)

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        load()
        return getattr(module, attribute)

    def stand_in(function: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            load()
            return getattr(module, function)(*args, **kwargs)

        call.__name__ = call.__qualname__ = function
        return call

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    for function in functions:
        setattr(module, function, stand_in(function))
    sys.modules[name] = module


def _install_async_client() -> None:
    if _imported(CLIENT):
        return  # already imported (or being imported): the real packages stay
    root = _package_directory(CLIENT)
    if root is None:
        return
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
