"""The spiking neuron: its spec as data (``spec``, jax-free), the equations (``equations``), the
fused fast path (``fused``), the NNX layer (``layers``) and rematerialisation (``remat``).

The package face (docs/API.md) is lazy: importing the package loads no jax (the config layer
imports ``spec``); a name of ``_FACE`` loads its module at first use.
"""

from cfsnn_jax import lazy_face

_FACE = {  # name -> module of this package that defines it
    "NeuronSpec": "spec", "resolve_spec": "spec", "spec_dict": "spec", "lif_decay": "spec",
    "NEURON_PRESETS": "spec",
    "run_neuron": "equations", "neuron_step": "equations", "spike": "equations",
    "smooth_staircase": "equations",
    "SURROGATES": "equations", "surrogate_grad": "equations", "alpha_from_rho": "equations",
    "NeuronStats": "equations",
    "run_neuron_with_stats": "fused",
    "SpikingNeuron": "layers", "NeuronFactory": "layers", "per_step": "layers",
    "neuron_parameters": "layers",
    "REMATS": "remat",
}
__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(__name__, _FACE)
