"""The engine: opens a store and runs query → retrieve."""

from vitrine.engine.engine import Hit, SearchEngine, SyncReport, open

__all__ = ["Hit", "SearchEngine", "SyncReport", "open"]
