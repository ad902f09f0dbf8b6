"""Registries of methods by name ("module:attribute" strings), imported only when one is used, so that a new
method is one class or function in one file plus one line in its registry, and listing names costs nothing."""

from __future__ import annotations

from importlib import import_module

from headwise.errors import HeadwiseError


def lookup(registry: dict[str, str], name: str, what: str) -> object:
    """The object registered as `name`; an unknown name is a HeadwiseError listing the choices."""
    if name not in registry:
        raise HeadwiseError(f"unknown {what} {name!r}; choose {', '.join(registry)}")
    module, _, attribute = registry[name].partition(":")
    return getattr(import_module(module), attribute)
