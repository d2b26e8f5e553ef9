"""``python -m cfsnn_jax.analysis.energy``: the energy CLI (``analysis.energy_cli``). A package
``__main__`` so the library module ``analysis.energy`` is imported once, never run twice."""

from cfsnn_jax.analysis import energy_cli

energy_cli.run()
