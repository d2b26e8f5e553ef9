"""Analyses of trained (or fresh) spiking models: numbers and matplotlib plots.

Modules never import ``cfsnn_jax.training.loop`` (and ``train`` never imports them: ``run.run``
writes the end-of-run report); they take models, parameters, batches or a workdir. The energy
CLI (``python -m cfsnn_jax.analysis.energy``: ``energy/__main__.py`` -> ``energy_cli``)
rebuilds a run's state with ``cfsnn_jax.training.steps``. docs/ANALYSIS.md states every
counting rule.
"""
