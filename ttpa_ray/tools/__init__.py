"""Tool catalogs: built-in synthetic tools, tool files, BFCL function docs."""

from ttpa_ray.tools.catalog import (
    Catalog,
    catalog_from_entries,
    catalog_tools,
    load_bfcl,
    load_builtin,
    load_catalog,
    load_file,
    write_catalog,
)

__all__ = [
    "Catalog",
    "catalog_from_entries",
    "catalog_tools",
    "load_bfcl",
    "load_builtin",
    "load_catalog",
    "load_file",
    "write_catalog",
]
