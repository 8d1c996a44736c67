"""Let a module of atlas.client stand in for the requests module of the same name.

``atlas.client.sessions`` and ``atlas.client.adapters`` (and ``.api``) take the
place of ``requests.sessions`` and ``requests.adapters`` when code does
``from atlas import client as requests``. A shadowing module answers every
name its requests module has (its own definitions first), and an assignment
or ``mock.patch`` of a name that belongs to requests goes to requests' module,
where requests' code (which atlas' classes inherit) actually looks it up:
``requests.sessions.get_netrc_auth = fake`` works as it does with requests.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_TARGET = "_atlas_shadows"


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class ShadowModule(types.ModuleType):
    """A module whose missing names, and writes to requests' names, go to a requests module."""

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get(_TARGET, (None,))[0]
        if target is None or _is_dunder(name):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        try:
            return getattr(target, name)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        target, forwarded, copied = self.__dict__.get(_TARGET, (None, (), ()))
        if name in forwarded:
            setattr(target, name, value)
            if name not in copied:
                return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        target, forwarded, copied = self.__dict__.get(_TARGET, (None, (), ()))
        if name in forwarded:
            delattr(target, name)
            if name not in copied:
                return
        super().__delattr__(name)

    def __dir__(self) -> list[str]:
        target = self.__dict__.get(_TARGET, (None,))[0]
        return sorted(set(self.__dict__) | set(dir(target) if target is not None else ()))


def shadow(module_name: str, original: types.ModuleType) -> None:
    """Make the (already imported) module ``module_name`` stand in for requests' ``original``.

    Call it at the end of the module. Names of ``original`` that the module does
    not redefine are forwarded: read from ``original``, and written to it (and to
    the module's own copy, for a name it imported from ``original`` unchanged).
    """
    module = sys.modules[module_name]
    mine = vars(module)
    theirs = vars(original)
    forwarded = frozenset(
        name
        for name, value in theirs.items()
        if not _is_dunder(name) and (name not in mine or mine[name] is value)
    )
    copied = frozenset(name for name in forwarded if name in mine)
    mine[_TARGET] = (original, forwarded, copied)
    module.__class__ = ShadowModule
