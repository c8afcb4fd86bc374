"""Exports imported on first use (PEP 562), as the three packages' public names are: importing `classify` to train on
a cache then does not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, homes: dict[str, str], names: list[str]) -> tuple[Callable, Callable]:
    """A package's `__getattr__` and `__dir__`: each name in `homes` comes from the module named there."""

    def __getattr__(name: str) -> object:  # noqa: N807 - the module hook's name
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    def __dir__() -> list[str]:  # noqa: N807
        return names

    return __getattr__, __dir__
