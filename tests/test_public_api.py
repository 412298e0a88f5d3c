"""Each package's ``__all__`` is sorted, unique, and names every public class and function."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import channels
import service

if TYPE_CHECKING:
    from types import ModuleType

PACKAGES = [channels, service]


def modules(package: ModuleType) -> list[ModuleType]:
    names = [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    found = [importlib.import_module(name) for name in names if not name.endswith("__main__")]
    return [package, *found]


ALL_MODULES = [module for package in PACKAGES for module in modules(package)]


@pytest.mark.parametrize("module", ALL_MODULES, ids=lambda module: module.__name__)
def test_all_is_a_sorted_tuple_without_duplicates(module: ModuleType) -> None:
    exported = module.__all__
    assert isinstance(exported, tuple)
    assert list(exported) == sorted(exported)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), name


@pytest.mark.parametrize("module", ALL_MODULES, ids=lambda module: module.__name__)
def test_all_names_every_public_class_and_function_defined_here(module: ModuleType) -> None:
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= set(module.__all__)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_package_reexports_the_public_names_users_need(package: ModuleType) -> None:
    for name in package.__all__:
        value = getattr(package, name)
        assert getattr(importlib.import_module(value.__module__), name) is value


def test_channels_never_imports_service() -> None:
    for module in modules(channels):
        source = inspect.getsource(module)
        assert "import service" not in source
        assert "from service" not in source


#: What the server needs and a client must not load: an application that only talks to
#: Clarion installs the client, not the server's stack.
#: What the client must not load: the server's libraries, its ASGI side, and the engine
#: beyond the wire's types (errors, publications, statistics).
SERVER_ONLY = (
    "hypercorn",
    "prometheus_client",
    "jwt",
    "coredis",
    "service.app",
    "service.session",
    "service.websocket",
    "service.settings",
    "channels.hub",
    "channels.brokers",
    "channels.config",
    "channels.rules",
    "channels.outbox",
    "channels.sender",
)


def test_the_python_client_loads_nothing_of_the_server() -> None:
    probe = "import sys, service.client; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert "service.client" in loaded
    assert [name for name in loaded if name.startswith(SERVER_ONLY)] == []
