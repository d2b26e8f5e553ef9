"""Analyses of trained (or fresh) spiking models: numbers and matplotlib plots.

Modules never import ``cfsnn_jax.train``; they take models, parameters, batches or a workdir.
The one exception is the energy CLI glue, ``energy_cli.main``, which imports it inside the
function to rebuild a run's state. docs/ANALYSIS.md states every counting rule.
"""
