"""The optional parts (pyproject.toml's extras), imported only by the commands that need them."""

from __future__ import annotations

import importlib

from snapledger.domain.errors import MissingExtra

LIBVIRT = ("libvirt", "libvirt-python", ("libvirt",))
POSTGRES = ("postgres", "psycopg (for a postgresql:// store)", ("psycopg", "psycopg_pool"))


def require(extra: tuple[str, str, tuple[str, ...]]) -> None:
    """Import the extra's modules, or raise MissingExtra naming the `pip install` to run."""
    name, what, modules = extra
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingExtra(what, name, error) from None
