"""Paper-ready PNG figures of the spiking statistics (matplotlib's object-oriented API).

Contract: every ``plot_*(..., workdir, filename)`` writes one PNG at ``DPI`` (300) into
``workdir`` (created if missing) and returns its path; every ``*_figure(...)`` builds the same
``matplotlib.figure.Figure`` without writing it (for notebooks and tests). No pyplot, no
global state: importing this module never changes the matplotlib backend, and figures are
drawn by their own ``FigureCanvasAgg``. Inputs are ``spiking_stats.SpikingStats`` and the
history dict of ``spiking_stats.neuron_history_from_*``; nothing is recomputed here except
histograms.

Layout rules (the reviewer's checklist is in docs/ANALYSIS.md): one column wide
(``COLUMN_IN`` = 3.5 in) except the membrane small multiples (``FULL_IN`` = 7.2 in, two
columns); fonts 7–8 pt at print size, never below 6 pt; every axis labelled, with its unit;
per-layer × per-step quantities as heatmaps (layers on the y axis, readable for ResNet-19's
20+ spiking layers), evolutions coloured by layer depth with a colour bar instead of a legend.
- ``plot_firing_rates``: heatmap of spikes per neuron per step, layer × time step.
- ``plot_gradient_available``: share (%) of potentials inside the gradient-available
  interval per layer (mean over steps, min–max over steps as a band); the DS-ATGO paper's
  "> 38 %" reference line only when a layer runs the DS-ATGO neuron.
- ``plot_membrane_histograms``: one panel per layer, the pooled histogram of pre-fire
  potentials with one line per step (T <= 4), the staircase thresholds ``k theta`` (and
  ``-k theta`` signed) dashed only where they fall inside the panel's range.
- ``plot_alphas``: surrogate sharpness per layer and step (heatmap), its evolution over
  training (mean over steps per layer), and the DS-ATGO threshold EMA when present.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import matplotlib
import matplotlib.lines
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cfsnn_jax.analysis import spiking_stats

DPI = 300
COLUMN_IN = 3.5  # one column of a two-column paper
FULL_IN = 7.2  # both columns
DSATGO_GRAD_SHARE = 0.38  # METHOD.md §4.4: the share the DS-ATGO paper reports inside it
ANNOTATE_MAX_CELLS = 60  # heatmaps print their values when they have at most this many cells
STYLE = {  # applied with rc_context around building and saving, never globally
    "font.size": 7, "axes.titlesize": 7.5, "axes.labelsize": 7, "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5, "legend.fontsize": 6.5, "figure.titlesize": 8,
    "axes.linewidth": 0.6, "lines.linewidth": 1.0, "lines.markersize": 3,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "axes.grid": False,
    "savefig.dpi": DPI, "figure.dpi": 100,
}
POTENTIAL_LABEL = "potential $H$ (a.u.)"


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.03, hspace=0.03)
  return fig


def save_figure(fig: Figure, workdir: str, filename: str) -> str:
  """Writes ``fig`` as ``workdir/filename`` at ``DPI``; returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, filename)
  with matplotlib.rc_context(STYLE):
    fig.savefig(path, dpi=DPI, metadata={"Software": "cfsnn_jax"})
  return path


def _mode(stats: spiking_stats.SpikingStats) -> str:
  return "train mode" if stats.training else "eval mode"


def _short(name: str) -> str:
  """Module path -> compact label: ``blocks.3.sn1`` -> ``b3.sn1``, ``neurons.0`` -> ``n0``."""
  parts = name.split(".")
  head = {"blocks": "b", "neurons": "n", "layers": "l", "stages": "s"}.get(parts[0])
  if head and len(parts) > 1 and parts[1].isdigit():
    return ".".join([head + parts[1]] + parts[2:])
  return name


def _layer_ticks(ax, names: list[str], axis: str = "y") -> None:
  L = len(names)
  step = max(1, math.ceil(L / 26))  # at most ~26 labels per axis
  idx = np.arange(0, L, step)
  labels = [f"{_short(names[i])}" for i in idx]
  if axis == "y":
    ax.set_yticks(idx, labels)
  else:
    ax.set_xticks(idx, labels, rotation=90 if L > 8 else 0)


def _heatmap(fig: Figure, ax, values_LT: np.ndarray, names: list[str], label: str,
             cmap: str = "viridis", fmt: str = "{:.2f}") -> None:
  L, T = values_LT.shape
  im = ax.imshow(values_LT, aspect="auto", cmap=cmap, interpolation="nearest",
                 extent=(0.5, T + 0.5, L - 0.5, -0.5))
  ax.set_xticks(np.arange(1, T + 1) if T <= 12 else np.linspace(1, T, 6).round())
  ax.set_xlabel("time step $t$")
  ax.set_ylabel("spiking layer (forward order)" if L >= 8 else "spiking layer")
  _layer_ticks(ax, names)
  cbar = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.02)
  cbar.set_label(label)
  if L * T <= ANNOTATE_MAX_CELLS:
    lo, hi = float(np.nanmin(values_LT)), float(np.nanmax(values_LT))
    for i in range(L):
      for t in range(T):
        v = values_LT[i, t]
        bright = hi > lo and (v - lo) / (hi - lo) > 0.6
        ax.text(t + 1, i, fmt.format(v), ha="center", va="center", fontsize=6,
                color="black" if bright else "white")


def _heatmap_height(num_layers: int) -> float:
  return min(9.0, max(1.9, 1.1 + 0.16 * num_layers))


# --------------------------------------------------------------------------------------------
# Firing rates and gradient availability.
# --------------------------------------------------------------------------------------------


def firing_rates_figure(stats: spiking_stats.SpikingStats) -> Figure:
  with matplotlib.rc_context(STYLE):
    fig = _figure(COLUMN_IN, _heatmap_height(len(stats.names)))
    ax = fig.add_subplot()
    _heatmap(fig, ax, stats.rate_LT, stats.names,
             "spikes per neuron per step", cmap="magma", fmt="{:.2f}")
    ax.set_title(f"Firing rate ({_mode(stats)}, {stats.num_examples} images; "
                 f"mean {stats.rate_LT.mean():.3f})")
  return fig


def plot_firing_rates(stats: spiking_stats.SpikingStats, workdir: str,
                      filename: str = "firing_rates.png") -> str:
  return save_figure(firing_rates_figure(stats), workdir, filename)


def is_dsatgo(spec) -> bool:
  """The DS-ATGO neuron (adaptive threshold + dynamic surrogate), whose paper reports the
  "> 38 %" share; reference lines of that paper are drawn only for it."""
  return spec.threshold_mode == "adaptive" and spec.surrogate_mode == "dynamic"


def gradient_available_figure(stats: spiking_stats.SpikingStats) -> Figure:
  share_LT = 100.0 * np.asarray(stats.grad_share_LT, np.float64)
  L = len(stats.names)
  with matplotlib.rc_context(STYLE):
    fig = _figure(COLUMN_IN, 2.5 if L <= 12 else 2.8)
    ax = fig.add_subplot()
    x = np.arange(L)
    ax.fill_between(x, share_LT.min(1), share_LT.max(1), color="C0", alpha=0.25, lw=0,
                    label="range over time steps")
    ax.plot(x, share_LT.mean(1), "o-", color="C0", label="mean over time steps")
    if any(is_dsatgo(s) for s in stats.specs):
      ax.axhline(100 * DSATGO_GRAD_SHARE, color="0.35", ls=":", lw=0.9,
                 label="DS-ATGO paper: > 38 %")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.5, L - 0.5)
    _layer_ticks(ax, stats.names, axis="x")
    ax.set_xlabel("spiking layer (forward order)")
    ax.set_ylabel("inside gradient interval (%)")
    ax.set_title(f"Gradient availability ({_mode(stats)}; mean "
                 f"{share_LT.mean():.1f} %)")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="best", frameon=False)
  return fig


def plot_gradient_available(stats: spiking_stats.SpikingStats, workdir: str,
                            filename: str = "grad_available.png") -> str:
  return save_figure(gradient_available_figure(stats), workdir, filename)


# --------------------------------------------------------------------------------------------
# Membrane potentials.
# --------------------------------------------------------------------------------------------


def thresholds_in_range(spec, theta_T: Iterable[float], lo: float, hi: float) -> list[float]:
  """Distinct staircase thresholds (``k theta_t``, signed: also negative) inside [lo, hi]."""
  lines = set()
  for theta in theta_T:
    for v in spiking_stats.threshold_lines(spec, float(theta)):
      if lo <= v <= hi:
        lines.add(round(v, 6))
  return sorted(lines)


def membrane_histograms_figure(stats: spiking_stats.SpikingStats, bins: int = 60,
                               hists: list[dict] | None = None) -> Figure:
  hists = hists if hists is not None else spiking_stats.membrane_histograms(stats, bins)
  L, T = len(stats.names), stats.num_steps
  ncols = min(5, L)
  nrows = math.ceil(L / ncols)
  per_step = T <= 4
  with matplotlib.rc_context(STYLE):
    fig = _figure(FULL_IN if ncols > 2 else COLUMN_IN, 0.55 + 1.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (name, spec, hist) in enumerate(zip(stats.names, stats.specs, hists)):
      ax = axes[i // ncols][i % ncols]
      edges = np.asarray(hist["edges"])
      counts_T = np.asarray(hist["counts_T"], np.float64)
      width = np.diff(edges).mean()
      pooled = counts_T.sum(0)
      ax.stairs(pooled / max(pooled.sum() * width, 1e-12), edges, fill=True, color="0.8",
                label="all steps")
      if per_step and T > 1:
        for t in range(T):
          ax.stairs(counts_T[t] / max(counts_T[t].sum() * width, 1e-12), edges,
                    color=f"C{t}", lw=0.7, label=f"$t = {t + 1}$")
      for v in thresholds_in_range(spec, stats.theta_LT[i], edges[0], edges[-1]):
        ax.axvline(v, color="k", ls="--", lw=0.6)
      ax.set_xlim(edges[0], edges[-1])
      ax.set_title(f"{_short(name)}  (rate {stats.rate_LT[i].mean():.2f})", fontsize=6.5)
      ax.tick_params(labelsize=6)
      ax.locator_params(axis="both", nbins=4)
      if i % ncols == 0:
        ax.set_ylabel("density (1/a.u.)", fontsize=6.5)
      if i + ncols >= L:  # the bottom panel of its column
        ax.set_xlabel(POTENTIAL_LABEL, fontsize=6.5)
    for j in range(L, nrows * ncols):
      axes[j // ncols][j % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(matplotlib.lines.Line2D([], [], color="k", ls="--", lw=0.6))
    labels.append(r"threshold $k\theta$ (drawn where in range)")
    wide = fig.get_figwidth() >= FULL_IN
    fig.legend(handles, labels, loc="outside lower center",
               ncols=len(labels) if wide else min(len(labels), 3), frameon=False,
               handlelength=1.4, fontsize=6.5)
    fig.suptitle(f"Pre-fire membrane potential per layer ({_mode(stats)})", fontsize=8)
  return fig


def plot_membrane_histograms(stats: spiking_stats.SpikingStats, workdir: str,
                             filename: str = "membrane_hist.png", bins: int = 60,
                             hists: list[dict] | None = None) -> str:
  return save_figure(membrane_histograms_figure(stats, bins, hists), workdir, filename)


# --------------------------------------------------------------------------------------------
# Learned surrogate sharpness and DS-ATGO thresholds.
# --------------------------------------------------------------------------------------------


def _evolution(fig: Figure, ax, history: dict, kind: str, names: list[str],
               ylabel: str) -> None:
  series = history.get(kind, {})
  steps = np.asarray(history.get("steps", []))
  order = {n: i for i, n in enumerate(names)}
  layers = sorted(series, key=lambda n: order.get(n, len(order)))
  cmap = matplotlib.colormaps["viridis"]
  drawn = 0
  for layer in layers:
    pts = [(s, np.mean(v)) for s, v in zip(steps, series[layer]) if v is not None]
    if not pts:
      continue
    depth = order.get(layer, 0) / max(len(names) - 1, 1)
    xs, vs = zip(*pts)
    ax.plot(xs, vs, "o-", color=cmap(depth), ms=2, lw=0.8)
    drawn += 1
  ax.set_xlabel("training step")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, lw=0.5)
  if drawn == 0:
    ax.text(0.5, 0.5, "nothing learned to track" if kind == "alpha" else "no history",
            ha="center", va="center", transform=ax.transAxes)
    return
  norm = matplotlib.colors.Normalize(1, max(len(names), 2))
  cbar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                      fraction=0.08, pad=0.02)
  cbar.set_label("layer depth")


def alphas_figure(stats: spiking_stats.SpikingStats, history: dict | None) -> Figure:
  history = history or {"steps": [], "alpha": {}, "theta_ema": {}, "source": "none"}
  has_theta = bool(history.get("theta_ema"))
  L = len(stats.names)
  modes = ", ".join(sorted({s.surrogate_mode for s in stats.specs}))
  source = history.get("source", "none") if history.get("steps") else "nothing"
  rows = 2 + has_theta
  with matplotlib.rc_context(STYLE):
    fig = _figure(COLUMN_IN, _heatmap_height(L) + 1.9 * (rows - 1))
    axes = fig.subplots(rows, 1, squeeze=False,
                        height_ratios=[_heatmap_height(L)] + [1.9] * (rows - 1))[:, 0]
    _heatmap(fig, axes[0], stats.alpha_LT, stats.names, r"surrogate sharpness $\alpha$",
             fmt="{:.1f}")
    axes[0].set_title(f"Surrogate sharpness per layer and step ({modes})")
    _evolution(fig, axes[1], history, "alpha", stats.names,
               r"$\alpha$ (mean over steps)")
    axes[1].set_title(f"Sharpness over training (from {source})")
    if has_theta:
      _evolution(fig, axes[2], history, "theta_ema", stats.names,
                 r"threshold EMA $\bar\theta$ (a.u.)")
      axes[2].set_title("DS-ATGO threshold EMA over training")
  return fig


def plot_alphas(stats: spiking_stats.SpikingStats, history: dict | None, workdir: str,
                filename: str = "alphas.png") -> str:
  return save_figure(alphas_figure(stats, history), workdir, filename)
