"""Loss / accuracy curves from a workdir's ``metrics.jsonl`` as a PNG (matplotlib, Agg).

``plot_training_curves(workdir) -> path`` writes ``workdir/curves.png`` with two panels: loss
(train, test) and accuracy (train, test) against the step.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cfsnn_jax.metric_writers import read_metrics  # noqa: E402


def plot_training_curves(workdir: str, filename: str = "curves.png") -> str:
  rows = read_metrics(workdir)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  for split, style in (("train", "-"), ("test", "o-")):
    pts = [r for r in rows if r["split"] == split]
    if not pts:
      continue
    steps = [r["step"] for r in pts]
    ax_loss.plot(steps, [r["loss"] for r in pts], style, label=split, markersize=3)
    ax_acc.plot(steps, [r["accuracy"] for r in pts], style, label=split, markersize=3)
  ax_loss.set(xlabel="step", ylabel="loss", title="loss")
  ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.0))
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
