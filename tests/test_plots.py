"""The end-of-run figures at paper quality for a ResNet-19-sized analysis (synthetic numbers).

Each figure: 300 dpi PNG within file-size bounds, every axis labelled, fonts >= 6 pt, no
text outside the figure, no label/tick/title text overlapping another text or any axes'
plotting area (matplotlib's tight bounding boxes after a draw), DS-ATGO's "> 38 %" line
only for DS-ATGO, CF threshold levels only where they are inside the plotted range.
Importing the plotting modules leaves the matplotlib backend alone.
"""

import itertools
import json
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.analysis import curves, plots, spiking_stats

T = 4
RESNET19_LAYERS = (["stem_neuron"]  # SEW-ADD ResNet-19's 20 spiking layers
                   + [f"blocks.{b}.neuron{n}" for b in range(8) for n in (1, 2)]
                   + ["blocks.3.down_neuron", "blocks.6.down_neuron", "fc_neuron"])
MIN_BYTES, MAX_BYTES = 20_000, 1_500_000


def _stats(neuron: str, names=RESNET19_LAYERS, training=False, seed=0):
  rng = np.random.default_rng(seed)
  L = len(names)
  spec = neurons.resolve_spec(neuron)
  theta_LT = (np.abs(rng.normal(0.6, 0.2, (L, T))) + 0.1 if spec.adaptive
              else np.full((L, T), spec.threshold))
  samples = [rng.normal(0.3 + 0.02 * i, 0.5 + 0.03 * i, (T, 3000)).astype(np.float32)
             for i in range(L)]
  return spiking_stats.SpikingStats(
      names=list(names), specs=[spec] * L, training=training, num_examples=256,
      rate_LT=rng.uniform(0.02, 0.4, (L, T)).astype(np.float32),
      grad_share_LT=rng.uniform(0.2, 0.7, (L, T)).astype(np.float32),
      theta_LT=theta_LT.astype(np.float32),
      alpha_LT=rng.uniform(2, 6, (L, T)).astype(np.float32), samples=samples)


def _history(names, with_theta):
  steps = [0, 100, 200, 300]
  hist = {"source": "metrics", "steps": steps,
          "alpha": {n: [[4.0 + 0.1 * s / 100 * (i % 5)] * T for s in steps]
                    for i, n in enumerate(names)}, "theta_ema": {}}
  if with_theta:
    hist["theta_ema"] = {n: [[1.0 - 0.001 * s] * T for s in steps] for n in names}
  return hist


def _metric_rows():
  rows = []
  for step in range(10, 401, 10):
    rows.append({"step": step, "split": "train", "loss": 2.3 / (1 + step / 50),
                 "accuracy": min(0.99, 0.1 + step / 400)})
    if step % 100 == 0:
      rows.append({"step": step, "split": "test", "loss": 2.4 / (1 + step / 60),
                   "accuracy": min(0.98, 0.1 + step / 420)})
  return rows


SMALL_LAYERS = ["neurons.0", "neurons.1"]  # the digits MLP of the README gallery


def _figures(names=RESNET19_LAYERS, suffix=""):
  cf, ds = _stats("cf", names), _stats("dsatgo", names, training=True)
  figs = {
      "firing_rates": plots.firing_rates_figure(cf),
      "grad_available_cf": plots.gradient_available_figure(_stats("cf", names, training=True)),
      "grad_available_dsatgo": plots.gradient_available_figure(ds),
      "membrane_hist": plots.membrane_histograms_figure(cf),
      "membrane_hist_dsatgo": plots.membrane_histograms_figure(_stats("dsatgo", names)),
      "alphas": plots.alphas_figure(cf, _history(names, False)),
      "alphas_dsatgo": plots.alphas_figure(ds, _history(names, True)),
  }
  if not suffix:
    figs["curves"] = curves.training_curves_figure(_metric_rows())
  return {k + suffix: v for k, v in figs.items()}


def _drawn_tick_labels(axis):
  lo, hi = sorted(axis.get_view_interval())
  eps = 1e-9 * max(1.0, abs(hi - lo))
  labels = []
  for tick in axis.get_major_ticks() + axis.get_minor_ticks():
    if lo - eps <= tick.get_loc() <= hi + eps:
      labels += [tick.label1, tick.label2]
  return labels


def _texts(fig):
  """(outside texts: drawn ticks, axis labels, titles, figure texts; inside texts:
  annotations and legends, by axes)."""
  def shown(t):
    return t.get_visible() and t.get_text().strip()
  outside, inside = [], {}
  for ax in fig.axes:
    if not ax.get_visible():
      continue
    own = list(ax.texts)
    if ax.get_legend() is not None:
      own += list(ax.get_legend().get_texts())
    inside[ax] = [t for t in own if shown(t)]
    if ax.axison:
      for axis in (ax.xaxis, ax.yaxis):
        outside += _drawn_tick_labels(axis) + [axis.label, axis.get_offset_text()]
    outside += [ax.title, ax._left_title, ax._right_title]
  outside += [t for t in (fig._suptitle, fig._supxlabel, fig._supylabel) if t is not None]
  outside += list(fig.texts)
  for legend in fig.legends:  # figure legends sit outside every axes
    outside += list(legend.get_texts())
  unique = {id(t): t for t in outside if shown(t)}
  return list(unique.values()), inside


def _check_layout(name, fig):
  renderer = fig.canvas.get_renderer()
  fig.draw(renderer)
  fig_box = fig.bbox
  outside, inside = _texts(fig)
  boxes = [(t, t.get_window_extent(renderer)) for t in outside]
  for t, b in boxes:
    assert t.get_fontsize() >= 6 - 1e-6, (name, t.get_text(), t.get_fontsize())
    assert (b.x0 >= fig_box.x0 - 1 and b.x1 <= fig_box.x1 + 1 and b.y0 >= fig_box.y0 - 1
            and b.y1 <= fig_box.y1 + 1), (name, "text clipped by the figure", t.get_text())
  areas = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()
           and ax.axison]
  for t, b in boxes:  # no tick label, axis label or title inside a plotting area
    for area in areas:
      ov = b.intersection(b, area)
      assert ov is None or ov.width * ov.height < 2.0, (name, "text over axes", t.get_text())
  for (t1, b1), (t2, b2) in itertools.combinations(boxes, 2):
    ov = b1.intersection(b1, b2)
    assert ov is None or ov.width * ov.height < 2.0, (name, "overlap", t1.get_text(),
                                                      t2.get_text())
  for ax, ts in inside.items():  # annotations and legends stay inside their own axes
    area = ax.get_window_extent(renderer)
    for t in ts:
      b = t.get_window_extent(renderer)
      assert area.x0 - 1 <= b.x0 and b.x1 <= area.x1 + 1 and area.y0 - 1 <= b.y0 \
          and b.y1 <= area.y1 + 1, (name, "annotation outside its axes", t.get_text())
  data_axes = [ax for ax in fig.axes if ax.axison and ax.get_visible()
               and getattr(ax, "_colorbar", None) is None]
  for ax in fig.axes:  # colour bars: labelled
    if getattr(ax, "_colorbar", None) is not None:
      assert ax.get_ylabel() or ax.get_xlabel(), (name, "colour bar without label")
  for ax in data_axes:  # small multiples: left column has y labels, column bottoms x labels
    spec = ax.get_subplotspec()
    rows, cols = (spec.rowspan, spec.colspan) if spec is not None else (range(1), range(1))
    below = [o for o in data_axes if o is not ax and o.get_subplotspec() is not None
             and spec is not None and o.get_subplotspec().colspan.start == cols.start
             and o.get_subplotspec().rowspan.start > rows.start]
    if cols.start == 0:
      assert ax.get_ylabel().strip(), (name, "axes without y label")
    if not below:
      assert ax.get_xlabel().strip(), (name, "axes without x label")


@pytest.fixture(scope="module")
def figures():
  return _figures() | _figures(SMALL_LAYERS, "_small")


def test_figures_fit_a_paper(figures, tmp_path):
  for name, fig in figures.items():
    _check_layout(name, fig)
    width_in = fig.get_figwidth()
    assert width_in <= plots.FULL_IN + 1e-6
    if not name.startswith("membrane_hist") or name.endswith("_small"):
      assert width_in == pytest.approx(plots.COLUMN_IN), name  # one column wide
    path = plots.save_figure(fig, str(tmp_path), f"{name}.png")
    size = os.path.getsize(path)
    assert MIN_BYTES < size < MAX_BYTES, (name, size)
    with Image.open(path) as im:
      assert im.info["dpi"][0] == pytest.approx(plots.DPI, abs=1)
      assert im.size[0] == pytest.approx(width_in * plots.DPI, abs=2)


def _ref_line_labels(fig):
  return [l.get_label() for ax in fig.axes for l in ax.get_lines()
          if "38" in str(l.get_label())]


def test_method_specific_reference_line_only_for_dsatgo(figures):
  assert _ref_line_labels(figures["grad_available_dsatgo"])
  assert not _ref_line_labels(figures["grad_available_cf"])
  assert "38" not in " ".join(t.get_text() for t in figures["grad_available_cf"].findobj(Text))


def test_threshold_levels_only_where_in_range():
  spec = neurons.resolve_spec("cf")  # D = 4, theta = 1: levels 1, 2, 3, 4
  assert plots.thresholds_in_range(spec, [1.0], -0.5, 2.5) == [1.0, 2.0]
  signed = neurons.resolve_spec("cf_signed")
  assert plots.thresholds_in_range(signed, [1.0], -1.5, 3.2) == [-1.0, 1.0, 2.0, 3.0]
  stats = _stats("cf", names=["neurons.0"])
  stats.samples = [np.random.default_rng(0).normal(0, 0.5, (T, 2000)).astype(np.float32)]
  fig = plots.membrane_histograms_figure(stats)
  ax = fig.axes[0]
  lo, hi = ax.get_xlim()
  vlines = [l.get_xdata()[0] for l in ax.get_lines()]
  assert vlines and all(lo <= v <= hi for v in vlines)
  assert sorted(set(vlines)) == plots.thresholds_in_range(spec, [1.0], lo, hi)
  assert max(vlines) < 4.0  # the 4th level lies far outside these potentials: not drawn


def test_heatmaps_have_one_row_per_layer_not_a_legend(figures):
  fig = figures["alphas"]
  img = fig.axes[0].get_images()[0]
  assert img.get_array().shape == (len(RESNET19_LAYERS), T)
  assert all(ax.get_legend() is None for ax in fig.axes)  # depth colour bar, not 80 entries


def test_curves_plot_accuracy_in_percent(figures):
  ax_acc = figures["curves"].axes[1]
  assert "%" in ax_acc.get_ylabel()
  assert max(l.get_ydata().max() for l in ax_acc.get_lines()) > 90
  assert ax_acc.get_ylim()[1] == pytest.approx(100.5)


def test_importing_the_package_keeps_the_matplotlib_backend():
  code = ("import matplotlib; matplotlib.use('svg'); "
          "import cfsnn_jax.training.loop, cfsnn_jax.analysis.plots, cfsnn_jax.analysis.curves, "
          "cfsnn_jax.analysis.report; print(matplotlib.get_backend())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "svg"
