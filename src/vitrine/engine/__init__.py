"""The engine: opens a store and runs query → retrieve."""

from vitrine.engine.engine import Hit, IndexState, SearchEngine, SearchOptions, SyncReport, TimedHits, open

__all__ = ["Hit", "IndexState", "SearchEngine", "SearchOptions", "SyncReport", "TimedHits", "open"]
