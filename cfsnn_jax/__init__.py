"""cfsnn_jax: directly trained spiking neural networks in JAX (docs/ARCHITECTURE.md maps the
wings). The root holds the entry point (``main``), one run end to end (``run``), the error
type (``errors``) and, here, ``lazy_face``: how a wing's package face loads its modules."""

import importlib
import sys
from typing import Callable


def lazy_face(package: str, face: dict[str, str]) -> tuple[Callable, Callable]:
  """``(__getattr__, __dir__)`` for ``package``, whose public names ``face`` maps to the
  module of the package that defines each: a name loads its module at first use."""

  def __getattr__(name: str):
    if name not in face:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{package}.{face[name]}"), name)

  def __dir__():
    return sorted(set(vars(sys.modules[package])) | set(face))

  return __getattr__, __dir__
