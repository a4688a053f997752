"""The encrypted cache (synchronous SQL; called from one worker thread)."""

from skiffyd.cache.store import Cache

__all__ = ["Cache"]
