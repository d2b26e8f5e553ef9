"""Interoperability with other frameworks and hardware: NIR export / import (``interop.nir``).

The package face (docs/API.md) is lazy (the ``nir`` package is an optional extra): a name of
``_FACE`` loads its module at first use.
"""

from cfsnn_jax import lazy_face

_FACE = {"export_nir": "nir", "import_nir": "nir", "write_nir": "nir", "read_nir": "nir"}
__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(__name__, _FACE)
