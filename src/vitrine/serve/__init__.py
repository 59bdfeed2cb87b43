"""The search service: a FastAPI app over one store, and its web page (``vitrine serve STORE``)."""

from vitrine.serve.app import create_app

__all__ = ["create_app"]
