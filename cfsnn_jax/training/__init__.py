"""Training: the loop (``loop``), the jitted steps (``steps``), checkpoints (``checkpointing``),
the run guard (``guard``), the workdir (``workdir``), metric writers (``metric_writers``),
progress, losses and the optimiser (``optim``). Every function takes a resolved run
(``cfsnn_jax.config.resolve``) and validates nothing again.

The package face (docs/API.md) is lazy: a name of ``_FACE`` loads its module at first use,
so importing one module of the package (``training.workdir`` from the energy CLI, say) does
not load the rest.
"""

from cfsnn_jax import lazy_face

_FACE = {  # name -> module of this package that defines it
    "train_and_evaluate": "loop", "Trained": "loop", "evaluate": "loop",
    "create_train_state": "steps", "make_steps": "steps", "build_model": "steps",
    "train_step": "steps", "eval_step": "steps", "TrainSetup": "steps", "Steps": "steps",
    "make_optimizer": "optim", "task_loss": "losses", "pn_loss": "losses",
    "read_metrics": "metric_writers",
}
__all__ = sorted(_FACE)
__getattr__, __dir__ = lazy_face(__name__, _FACE)
