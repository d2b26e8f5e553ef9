"""The config layer, importable without jax or flax: the command line (``command_line``), the
schema every field is validated against (``schema``), the recipes shared by the shipped
configs (``recipes``, with ``make_tiny``) and the valid names of every registry (``choices``)."""
