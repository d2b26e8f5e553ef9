"""The spiking neuron: its spec as data (``spec``, jax-free), the equations (``equations``), the
fused fast path (``fused``), the NNX layer (``layers``) and rematerialisation (``remat``).
Importing the package loads no jax (the config layer imports ``spec``)."""
