"""The store tests' fixtures: ``url`` on every storage backend and the ``s3`` server behind it (see :mod:`backends`)."""
from backends import s3, url

__all__ = ["s3", "url"]
