"""Loss / accuracy curves from a workdir's ``metrics.jsonl`` as a PNG (matplotlib OO API).

``plot_training_curves(workdir) -> path`` writes ``workdir/curves.png`` (300 dpi, one column
wide): loss (train, test) above accuracy in % (train, test), both against the training step.
``training_curves_figure(rows)`` builds the same figure from metric rows without writing it.
No pyplot, no backend change at import.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from cfsnn_jax.analysis import plots
from cfsnn_jax.training.metric_writers import read_metrics


def training_curves_figure(rows: list[dict]) -> Figure:
  with matplotlib.rc_context(plots.STYLE):
    fig = plots._figure(plots.COLUMN_IN, 3.6)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    final = None
    for split, style in (("train", "-"), ("test", "o-")):
      pts = [r for r in rows if r.get("split") == split and "loss" in r]
      if not pts:
        continue
      steps = np.asarray([r["step"] for r in pts])
      acc = 100.0 * np.asarray([r["accuracy"] for r in pts])
      ax_loss.plot(steps, [r["loss"] for r in pts], style, label=split, ms=2.5)
      ax_acc.plot(steps, acc, style, label=split, ms=2.5)
      if split == "test":
        final = acc[-1]
    ax_loss.set_ylabel("loss (cross-entropy)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_xlabel("training step")
    lo = min([l.get_ydata().min() for l in ax_acc.get_lines()], default=0.0)
    ax_acc.set_ylim(max(0.0, 10 * np.floor(lo / 10) - 5), 100.5)
    ax_loss.set_title("Training curves" + (f" (final test accuracy {final:.1f} %)"
                                           if final is not None else ""))
    for ax in (ax_loss, ax_acc):
      ax.grid(alpha=0.3, lw=0.5)
      if ax.get_lines():
        ax.legend(frameon=False)
  return fig


def plot_training_curves(workdir: str, filename: str = "curves.png") -> str:
  return plots.save_figure(training_curves_figure(read_metrics(workdir)), workdir, filename)
