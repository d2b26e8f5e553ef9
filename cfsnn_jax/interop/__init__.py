"""Interoperability with other frameworks and hardware: NIR export / import (``interop.nir``).

The package face (docs/API.md) is lazy (the ``nir`` package is an optional extra): a name of
``_FACE`` loads its module at first use.
"""

import importlib

_FACE = {"export_nir": "nir", "import_nir": "nir", "write_nir": "nir", "read_nir": "nir"}
__all__ = sorted(_FACE)


def __getattr__(name):
  if name not in _FACE:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_FACE[name]}"), name)


def __dir__():
  return sorted(list(globals()) + __all__)
