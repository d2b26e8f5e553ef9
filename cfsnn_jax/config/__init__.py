"""The config layer, importable without jax or flax: the command line (``command_line``), the
schema every field is validated against (``schema``), the resolved run (``resolved``), the
recipes shared by the shipped configs (``recipes``, with ``make_tiny``) and the valid names of
every registry (``choices``).

The package face (docs/API.md): ``resolve``, ``ResolvedRun``, ``validate_config``,
``base_config``, ``neuron_config``, ``make_tiny``, ``describe``.
"""

from cfsnn_jax.config.resolved import ResolvedRun, resolve
from cfsnn_jax.config.schema import (base_config, describe, make_tiny, neuron_config,
                                     validate_config)

__all__ = ["ResolvedRun", "base_config", "describe", "make_tiny", "neuron_config", "resolve",
           "validate_config"]
