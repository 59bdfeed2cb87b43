"""Products, the durable catalog, the store directory, and dataset loaders."""

from vitrine.catalog.filters import Filter, FilterError, filter_document
from vitrine.catalog.images import ImageInput, open_image
from vitrine.catalog.ingest import IngestReport, ingest
from vitrine.catalog.loaders import load_products, load_queries
from vitrine.catalog.product import BadRecord, LabelledQuery, Product, Sourced
from vitrine.catalog.sqlite import Catalog
from vitrine.catalog.store import Store

__all__ = [
    "BadRecord", "Catalog", "Filter", "FilterError", "ImageInput", "IngestReport", "LabelledQuery", "Product", "Sourced", "Store",
    "filter_document", "ingest", "load_products", "load_queries", "open_image",
]
