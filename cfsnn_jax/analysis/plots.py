"""PNG plots of the spiking statistics (matplotlib, Agg); each returns the path it wrote.

Contract: every ``plot_*(..., workdir, filename)`` writes one PNG into ``workdir`` (created if
missing) and returns its path. Inputs are ``spiking_stats.SpikingStats`` and the history dict
of ``spiking_stats.neuron_history_from_*``; nothing is recomputed here except histograms.
- ``plot_firing_rates``: spikes per neuron per step, per layer (x) and time step (lines).
- ``plot_gradient_available``: share of potentials inside the gradient-available interval.
- ``plot_membrane_histograms``: one panel per layer, one histogram per step, the thresholds
  (``k theta_t``, and ``-k theta_t`` for signed neurons) as dashed lines in the step's colour.
- ``plot_alphas``: surrogate sharpness per layer and step now, and its evolution over training
  (plus the DS-ATGO threshold EMA when present).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfsnn_jax.analysis import spiking_stats  # noqa: E402

DSATGO_GRAD_SHARE = 0.38  # METHOD.md §4: "> 38 % of neurons inside the interval"


def _save(fig, workdir: str, filename: str) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, filename)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _per_layer_lines(ax, values_LT: np.ndarray, names: list[str]) -> None:
  L, T = values_LT.shape
  x = np.arange(L)
  for t in range(T):
    ax.plot(x, values_LT[:, t], "o-", markersize=3, label=f"t = {t}", color=f"C{t % 10}")
  ax.plot(x, values_LT.mean(1), "k--", linewidth=1, label="mean over t")
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=min(T + 1, 6))


def _width(num_layers: int) -> float:
  return max(6.0, 0.35 * num_layers + 3)


def plot_firing_rates(stats: spiking_stats.SpikingStats, workdir: str,
                      filename: str = "firing_rates.png") -> str:
  fig, ax = plt.subplots(figsize=(_width(len(stats.names)), 4))
  _per_layer_lines(ax, stats.rate_LT, stats.names)
  mode = "train mode" if stats.training else "eval mode"
  ax.set(ylabel="spikes per neuron per step (mean |S|)",
         title=f"Firing rate per layer and step ({mode}, {stats.num_examples} examples, "
               f"mean {stats.rate_LT.mean():.3f})")
  return _save(fig, workdir, filename)


def plot_gradient_available(stats: spiking_stats.SpikingStats, workdir: str,
                            filename: str = "grad_available.png") -> str:
  fig, ax = plt.subplots(figsize=(_width(len(stats.names)), 4))
  _per_layer_lines(ax, stats.grad_share_LT, stats.names)
  ax.axhline(DSATGO_GRAD_SHARE, color="gray", linestyle=":", linewidth=1)
  ax.text(0, DSATGO_GRAD_SHARE, " DS-ATGO paper: > 38 %", fontsize=7, va="bottom",
          color="gray")
  mode = "train mode" if stats.training else "eval mode"
  ax.set(ylabel="share inside gradient-available interval", ylim=(0, 1.02),
         title=f"Gradient availability per layer and step ({mode}, mean "
               f"{stats.grad_share_LT.mean():.3f})")
  return _save(fig, workdir, filename)


def plot_membrane_histograms(stats: spiking_stats.SpikingStats, workdir: str,
                             filename: str = "membrane_hist.png", bins: int = 60,
                             hists: list[dict] | None = None) -> str:
  hists = hists if hists is not None else spiking_stats.membrane_histograms(stats, bins)
  L, T = len(stats.names), stats.num_steps
  ncols = min(4, L)
  nrows = math.ceil(L / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows), squeeze=False)
  for i, (name, spec, hist) in enumerate(zip(stats.names, stats.specs, hists)):
    ax = axes[i // ncols][i % ncols]
    edges = hist["edges"]
    for t in range(T):
      color = f"C{t % 10}"
      counts = hist["counts_T"][t]
      density = counts / max(counts.sum() * np.diff(edges).mean(), 1e-12)
      ax.stairs(density, edges, color=color, label=f"t = {t}")
      for v in spiking_stats.threshold_lines(spec, stats.theta_LT[i, t]):
        if edges[0] <= v <= edges[-1]:
          ax.axvline(v, color=color, linestyle="--", linewidth=0.9)
    ax.set_title(f"{name}  (rate {stats.rate_LT[i].mean():.3f})", fontsize=8)
    ax.tick_params(labelsize=7)
    if i == 0:
      ax.legend(fontsize=6)
  for j in range(L, nrows * ncols):
    axes[j // ncols][j % ncols].axis("off")
  mode = "train mode" if stats.training else "eval mode"
  fig.suptitle(f"Pre-fire membrane potential H per layer; dashed: thresholds ({mode})",
               fontsize=9)
  return _save(fig, workdir, filename)


def plot_alphas(stats: spiking_stats.SpikingStats, history: dict | None, workdir: str,
                filename: str = "alphas.png") -> str:
  history = history or {"steps": [], "alpha": {}, "theta_ema": {}, "source": "none"}
  panels = 2 + bool(history.get("theta_ema"))
  fig, axes = plt.subplots(1, panels, figsize=(max(_width(len(stats.names)), 5) + 5 *
                                               (panels - 1), 4), squeeze=False)
  axes = axes[0]
  _per_layer_lines(axes[0], stats.alpha_LT, stats.names)
  modes = sorted({s.surrogate_mode for s in stats.specs})
  axes[0].set(ylabel="surrogate sharpness alpha", title=f"alpha per layer and step "
              f"(surrogate mode: {', '.join(modes)})")
  order = {n: i for i, n in enumerate(stats.names)}
  for ax, kind, label in ((axes[1], "alpha", "alpha"),
                          (axes[2] if panels == 3 else None, "theta_ema", "threshold EMA")):
    if ax is None:
      continue
    series = history.get(kind, {})
    steps = np.asarray(history.get("steps", []))
    lines = 0
    for layer in sorted(series, key=lambda n: order.get(n, len(order))):
      values = series[layer]
      pts = [(s, v) for s, v in zip(steps, values) if v is not None]
      if not pts:
        continue
      xs = np.asarray([s for s, _ in pts])
      vs = np.asarray([v for _, v in pts])
      color = f"C{order.get(layer, 0) % 10}"
      for t in range(vs.shape[1]):
        ax.plot(xs, vs[:, t], marker="o", markersize=3, color=color,
                linestyle=("-", "--", ":", "-.")[t % 4],
                label=f"{layer} t={t}")
        lines += 1
    if lines == 0:
      ax.text(0.5, 0.5, "no learned values to track" if kind == "alpha" else "no history",
              ha="center", va="center", transform=ax.transAxes)
    elif lines <= 12:
      ax.legend(fontsize=6)
    ax.set(xlabel="training step", ylabel=label,
           title=f"{label} over training (from "
                 f"{history.get('source', 'none') if history.get('steps') else 'nothing'})")
    ax.grid(alpha=0.3)
  return _save(fig, workdir, filename)
