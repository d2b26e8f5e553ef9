"""Analyses of trained (or fresh) spiking models: numbers and matplotlib plots.

Modules never import ``cfsnn_jax.train``; they take models, parameters, batches or a workdir.
"""
