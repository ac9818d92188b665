"""The aistack gateway."""

import libs  # noqa: F401  (before httpx: see libs/__init__.py)
