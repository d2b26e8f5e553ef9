"""Analyses of trained (or fresh) spiking models: numbers and matplotlib plots.

Modules never import ``cfsnn_jax.training.loop`` (and the loop never imports them: ``run.run``
writes the end-of-run report); they take models, parameters, batches or a workdir. The energy
CLI (``python -m cfsnn_jax.analysis.energy``: ``energy/__main__.py`` -> ``energy_cli``)
rebuilds a run's state with ``cfsnn_jax.training.steps``. docs/ANALYSIS.md states every
counting rule.

The package face (docs/API.md) is lazy: a name of ``_FACE`` loads its module at first use.
"""

from cfsnn_jax import lazy_face

_FACE = {  # name -> module of this package that defines it
    "measure_energy": "energy", "energy_markdown": "energy", "trace_synaptic_ops": "energy",
    "collect_spiking_stats": "spiking_stats", "threshold_lines": "spiking_stats", "gradient_available_share": "spiking_stats",
    "write_training_report": "report", "plot_training_curves": "curves",
    "plot_firing_rates": "plots",
}
__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(__name__, _FACE)
