"""Interoperability with other frameworks and hardware: NIR export / import (``interop.nir``)."""
