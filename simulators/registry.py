"""Name -> simulator registry: ``get``, ``available`` and the ``register`` decorator."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from simulators.base import Simulator

__all__ = ["register", "get", "available"]

F = TypeVar("F", bound=Callable[..., Simulator])

_REGISTRY: dict[str, Callable[..., Simulator]] = {}


def register(name: str) -> Callable[[F], F]:
    """Class decorator that makes a simulator available as ``simulators.get(name)``.

    Works on a :class:`Simulator` subclass (its ``name`` attribute is set to ``name``) or
    on any factory function returning a simulator.

    Example:
        >>> @simulators.register("my_sim")
        ... class MySim(simulators.Simulator):
        ...     ...

    Args:
        name: the registry name; must not already be used by a different simulator.

    Raises:
        ValueError: if ``name`` is empty or already registered to something else.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"simulator name must be a non-empty string, got {name!r}")

    def decorator(factory: F) -> F:
        old = _REGISTRY.get(name)
        if old is not None and _qualified(old) != _qualified(factory):
            raise ValueError(
                f"simulator name {name!r} is already registered to {_qualified(old)}; choose another name"
            )
        if isinstance(factory, type) and issubclass(factory, Simulator):
            factory.name = name
        _REGISTRY[name] = factory
        return factory

    return decorator


def get(name: str, **kwargs: Any) -> Simulator:
    """Build a new instance of the simulator registered as ``name``.

    Args:
        name: a name from :func:`available`, or the import path of your own simulator
            class or factory as ``"package.module:Name"`` (imported, never unpickled).
        **kwargs: passed to the simulator's constructor (e.g. ``dim=5`` for ``gaussian_linear``).

    Returns:
        A fresh simulator instance.

    Raises:
        KeyError: for an unknown name; the message lists the available ones.
        ImportError: when an import path cannot be imported or lacks the attribute.
    """
    if ":" in name:
        return _import_factory(name)(**kwargs)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown simulator {name!r}; available: {', '.join(available())}") from None
    return factory(**kwargs)


def available() -> list[str]:
    """Sorted names of all registered simulators."""
    return sorted(_REGISTRY)


def _import_factory(path: str) -> Callable[..., Simulator]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportError(f"simulator import path must look like 'package.module:Name', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{module_name!r} has no attribute {attr!r} (from simulator path {path!r})") from None
    if not callable(obj):
        raise ImportError(f"{path!r} is not a simulator class or factory")
    return obj


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
