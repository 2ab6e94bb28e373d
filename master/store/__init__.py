"""Stores, chosen by the URL scheme in one table."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from master.store.base import Store, StoreError

__all__ = ["Store", "StoreError", "open_store_url"]


def _memory(url: str) -> Store:
    from master.store.memory import MemoryStore

    return MemoryStore()


def _sqlite(url: str) -> Store:
    from master.store.sqlite import SQLiteStore

    return SQLiteStore.from_url(url)


def _etcd(url: str) -> Store:
    from master.store.etcd import EtcdStore

    return EtcdStore.from_url(url)


STORES: dict[str, Callable[[str], Store]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "etcd": _etcd,
}


def open_store_url(url: str) -> Store:
    """Build (not yet open) the store a URL names; ValueError for an unknown scheme."""
    scheme = urlsplit(url).scheme
    factory = STORES.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORES)
        raise ValueError(f"unknown store scheme {scheme + '://' if scheme else url!r}; use {known}")
    return factory(url)
