"""Training: the loop (``loop``), the jitted steps (``steps``), checkpoints (``checkpointing``),
the run guard (``guard``), the workdir (``workdir``), metric writers (``metric_writers``),
progress, losses and the optimiser (``optim``)."""
