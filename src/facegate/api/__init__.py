"""HTTP layer: routes, schemas, limits and the error mapping. Holds no numerics."""

from .app import create_app

__all__ = ["create_app"]
