"""Energy estimate of a spiking model (METHOD.md §7), with MACs read from the model's own trace.

``E = E_MAC * MACs_encoder + E_AC * sum_l SOP_l``, ``SOP_l = r_l * T * MACs_l``, per image, in
mJ (``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ``). docs/ANALYSIS.md states every counting rule.

Contract:
- ``trace_synaptic_ops(model, x) -> list[SynapticOp]``: every ``conv_general_dilated`` and
  ``dot_general`` of one forward pass, found in the jaxpr of ``model(x)`` (through nested
  ``jit`` / ``custom_jvp`` calls), in execution order. Abstract: ``model`` may come from
  ``nnx.eval_shape`` and ``x`` may be a ``jax.ShapeDtypeStruct``; nothing is computed. Each op
  gets the ANN-twin MACs per image and time step, the number of executions per image
  (``steps``: 1 for the encoder of a static input, which runs once and is repeated over T;
  T otherwise), whether it is an encoder (its activation operand comes from the model input
  through no neuron: counted as MAC) and a name: the module path of its weight
  (``blocks.0.conv1``), or ``<parent>.matmul<j>`` for an activation x activation product
  (Spikformer's attention), ``<parent>`` being the common module path of its neighbours.
- ``measure_energy(model, batches) -> EnergyReport``: runs the model (a copy, in eval mode) on
  real batches through the same trace and measures each op's input spike count per element
  ``r_l = mean |x|`` (multi-level: the count; signed: ``|S|``); padding rows are dropped.
  For an activation x activation product the measured quantity is the exact number of unit
  accumulations ``sum |a| |b|`` over all its products, and ``r_l`` is that divided by
  ``T * MACs_l``.
- ``energy_markdown(report)`` / ``write_energy(report, workdir)``: the per-layer table
  (name, kind, MACs, input rate, SOPs, energy) and the total; ``energy.json`` + ``energy.md``.
- CLI: ``python -m cfsnn_jax.analysis.energy --config=configs/X.py --workdir=DIR`` (the glue,
  which needs the training state, lives in ``energy_cli``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfsnn_jax import backends
from cfsnn_jax.analysis import inputs

E_MAC_PJ = 4.6  # 45 nm multiply-accumulate (METHOD.md §7)
E_AC_PJ = 0.9  # 45 nm accumulate
PJ_PER_MJ = 1e9

_SYNAPTIC = ("conv_general_dilated", "dot_general")
# Call-like primitives whose body is evaluated inline, so the ops inside are seen (and named).
_INLINE = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "remat", "remat2",
           "checkpoint")


@dataclasses.dataclass(frozen=True)
class SynapticOp:
  """One conv / matmul of the forward pass (static: from the trace alone)."""
  name: str
  kind: str  # conv | dense | matmul (activation x activation)
  macs: int  # ANN-twin MACs per image and time step
  steps: int  # executions per image: 1 (encoder of a static input) or T
  encoder: bool  # analog input: counted as MAC, not AC
  in_shapes: tuple[tuple[int, ...], ...]  # activation operand(s) as traced (whole batch)
  out_shape: tuple[int, ...]

  @property
  def ops_per_image(self) -> int:
    return self.macs * self.steps


@dataclasses.dataclass
class EnergyRow:
  name: str
  kind: str
  encoder: bool
  macs: int  # per image and step (ANN twin)
  steps: int
  rate: float | None  # input spikes per element (None: analog encoder input)
  sops: float  # per image (0 for MAC layers)
  energy_mj: float  # per image


@dataclasses.dataclass
class EnergyReport:
  rows: list[EnergyRow]
  num_steps: int
  num_examples: int
  e_mac_pj: float
  e_ac_pj: float
  notes: list[str]

  @property
  def encoder_macs(self) -> int:
    return sum(r.macs * r.steps for r in self.rows if r.encoder)

  @property
  def total_sops(self) -> float:
    return float(sum(r.sops for r in self.rows))

  @property
  def total_macs(self) -> int:
    """ANN-twin MACs per image and step, summed over layers."""
    return sum(r.macs for r in self.rows)

  @property
  def energy_mj(self) -> float:
    return float(sum(r.energy_mj for r in self.rows))

  @property
  def ann_energy_mj(self) -> float:
    """The ANN twin (every MAC at E_MAC, one pass), for comparison."""
    return self.total_macs * self.e_mac_pj / PJ_PER_MJ

  def to_json(self) -> dict:
    return {"energy_mj_per_image": self.energy_mj, "ann_energy_mj_per_image":
            self.ann_energy_mj, "encoder_macs": self.encoder_macs, "total_sops": self.total_sops,
            "total_macs_per_step": self.total_macs, "num_steps": self.num_steps,
            "num_examples": self.num_examples, "e_mac_pj": self.e_mac_pj,
            "e_ac_pj": self.e_ac_pj, "notes": self.notes,
            "layers": [dataclasses.asdict(r) for r in self.rows]}


# ---------------------------------------------------------------------------------------------
# A small jaxpr interpreter: evaluates the forward eqn by eqn (abstractly under make_jaxpr, or
# under jit on real data) and tags every value with where it comes from.
# ---------------------------------------------------------------------------------------------


class _Tag(NamedTuple):
  data: bool  # depends on the model input
  raw: bool  # depends on the model input through no spike (analog)
  origin: frozenset  # parameter leaves a data-free value is computed from


_CONST = _Tag(False, False, frozenset())


def _has_spike(eqn) -> bool:
  """An eqn that is or contains a custom_vjp emits spike-derived values: the custom_vjps of a
  model's forward are the neuron's (the fused BPTT of ``neurons_fused``, or ``neurons.spike``
  on the reference path) and, on CPU, ``backends.checkpoint``'s wrapper of a block, whose
  outputs are its neurons' spikes too."""
  if eqn.primitive.name.startswith("custom_vjp"):
    return True
  return any(_has_spike(e) for sub in jex.jaxprs_in_params(eqn.params) for e in sub.eqns)


def _is_wrapper_vjp(eqn) -> bool:
  """A custom_vjp around convs / matmuls (a rematerialised block, ``jax.checkpoint`` inside a
  custom_vjp): its forward is its ``call_jaxpr``, evaluated inline so the ops are seen. The
  spike's custom_vjp holds no conv / matmul and stays one op."""
  return eqn.primitive.name.startswith("custom_vjp") and _contains_synaptic(eqn)


def _contains_synaptic(eqn) -> bool:
  return any(e.primitive.name in _SYNAPTIC or _contains_synaptic(e)
             for sub in jex.jaxprs_in_params(eqn.params) for e in sub.eqns)


def _inline_body(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if isinstance(sub, jex.ClosedJaxpr):
      return sub.jaxpr, list(sub.consts)
    if isinstance(sub, jex.Jaxpr):
      return sub, []
  return None


def _macs_total(eqn) -> int:
  out = eqn.outvars[0].aval
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  if eqn.primitive.name == "conv_general_dilated":
    dn = eqn.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec
    window = math.prod(rhs.shape[i] for i in rhs_spec[2:])
    return int(math.prod(out.shape) * window * rhs.shape[rhs_spec[1]])
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  return int(math.prod(out.shape) * math.prod(lhs.shape[i] for i in lhs_contract))


class _Site(NamedTuple):
  origin: frozenset  # weight's parameter leaves (empty for activation x activation)
  kind: str
  macs_total: int  # over the traced batch and all executions
  encoder: bool
  all_raw: bool
  in_shapes: tuple
  out_shape: tuple


def _interpret(jaxpr, consts, args, arg_tags, sites: list, stats: list | None):
  """Evaluates ``jaxpr``; appends a ``_Site`` per synaptic op to ``sites`` and, when ``stats`` is
  a list, the op's measured activity (traced arrays) to ``stats``."""
  env, tags = {}, {}

  def read(v):
    if isinstance(v, jex.Literal):
      return v.val, _CONST
    return env[v], tags[v]

  for v, val in zip(jaxpr.constvars, consts):
    env[v], tags[v] = val, _CONST
  for v, val, tag in zip(jaxpr.invars, args, arg_tags):
    env[v], tags[v] = val, tag

  for eqn in jaxpr.eqns:
    vals, in_tags = zip(*(read(v) for v in eqn.invars)) if eqn.invars else ((), ())
    name = eqn.primitive.name
    # a custom_vjp holding convs is backends.checkpoint's CPU wrapper of a block: its forward is
    # evaluated inline (its neurons' own custom_vjps still mark their spikes)
    body = _inline_body(eqn) if name in _INLINE or _is_wrapper_vjp(eqn) else None
    if body is not None:
      outs, out_tags = _interpret(body[0], body[1], vals, in_tags, sites, stats)
    else:
      if name in _SYNAPTIC:
        _record(eqn, vals, in_tags, sites, stats)
      outs = _bind(eqn, vals)
      outs = outs if eqn.primitive.multiple_results else [outs]
      data = any(t.data for t in in_tags)
      raw = any(t.raw for t in in_tags) and not _has_spike(eqn)
      origin = frozenset() if data else frozenset().union(*(t.origin for t in in_tags))
      out_tags = [_Tag(data, raw, origin)] * len(outs)
      if data and name not in _SYNAPTIC and _contains_synaptic(eqn):
        sites.append(None)  # a conv / matmul hidden in a loop body: reported, not counted
    for v, val, tag in zip(eqn.outvars, outs, out_tags):
      env[v], tags[v] = val, tag
  return [read(v)[0] for v in jaxpr.outvars], [read(v)[1] for v in jaxpr.outvars]


def _bind(eqn, vals):
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = []
  if isinstance(params, tuple):  # older jax: (subfuns, params)
    subfuns, params = params
  with eqn.ctx.manager:
    return eqn.primitive.bind(*subfuns, *vals, **params)


def _record(eqn, vals, in_tags, sites, stats) -> None:
  lhs_t, rhs_t = in_tags[:2]
  if not (lhs_t.data or rhs_t.data):
    return  # parameter-only product (no activity): not a synaptic operation
  conv = eqn.primitive.name == "conv_general_dilated"
  both = lhs_t.data and rhs_t.data
  acts = [i for i, t in enumerate((lhs_t, rhs_t)) if t.data]
  weight = None if both else (1 - acts[0])
  kind = "matmul" if both else ("conv" if conv else "dense")
  sites.append(_Site(
      origin=frozenset() if both else in_tags[weight].origin, kind=kind,
      macs_total=_macs_total(eqn), encoder=any(in_tags[i].raw for i in acts),
      all_raw=all(in_tags[i].raw for i in acts),
      in_shapes=tuple(tuple(eqn.invars[i].aval.shape) for i in acts),
      out_shape=tuple(eqn.outvars[0].aval.shape)))
  if stats is None:
    return
  if both:  # exact unit accumulations: sum over all products of |a| |b|
    a, b = (jnp.abs(jnp.asarray(v, jnp.float32)) for v in vals[:2])
    params = dict(eqn.params, preferred_element_type=jnp.float32)
    stats.append({"abs_products": jnp.sum(eqn.primitive.bind(a, b, **params))})
  else:
    x = jnp.asarray(vals[acts[0]])
    stats.append({"abs_sum": jnp.sum(jnp.abs(x.astype(jnp.float32))),
                  "numel": jnp.asarray(x.size, jnp.float32)})


def _leaf_names(state: Any) -> list[str]:
  names = []
  for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
    parts = []
    for k in path:
      part = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
      if part != "value":
        parts.append(str(part))
    names.append(".".join(parts))
  return names


def _forward(graphdef) -> Callable:
  def fwd(state, x):
    return nnx.merge(graphdef, state)(x)
  return fwd


def _traced(graphdef, state, x, stats: list | None):
  """Traces ``model(x)`` and interprets it; returns the raw sites (and fills ``stats``).
  Traced on XLA's convolutions (``backends.reference_convolutions``): every conv is a
  ``conv_general_dilated`` here, whatever kernels the training step uses."""
  with backends.reference_convolutions():
    closed = jax.make_jaxpr(_forward(graphdef))(state, x)
  flat_state = jax.tree.leaves(state)
  args = list(flat_state) + [x]
  arg_tags = [_Tag(False, False, frozenset([i])) for i in range(len(flat_state))]
  arg_tags.append(_Tag(True, True, frozenset()))
  sites: list = []
  _interpret(closed.jaxpr, closed.consts, args, arg_tags, sites, stats)
  return sites


def _common_prefix(a: str, b: str) -> str:
  out = []
  for x, y in zip(a.split("."), b.split(".")):
    if x != y:
      break
    out.append(x)
  return ".".join(out)


def _name_sites(sites: list, leaf_names: list[str]) -> list[str]:
  """Weight ops: the module path of their weight; activation products: ``<parent>.matmul<j>``."""
  base = []
  for s in sites:
    if s.origin:
      paths = sorted({leaf_names[i].rsplit(".", 1)[0] for i in s.origin})
      base.append("+".join(paths))
    else:
      base.append(None)
  names, seen, counters = [], {}, {}
  for i, (s, b) in enumerate(zip(sites, base)):
    if b is None:
      prev = next((base[j] for j in range(i - 1, -1, -1) if base[j]), "")
      nxt = next((base[j] for j in range(i + 1, len(base)) if base[j]), "")
      parent = _common_prefix(prev, nxt)
      j = counters.get(parent, 0)
      counters[parent] = j + 1
      b = f"{parent}.matmul{j}" if parent else f"matmul{j}"
    k = seen.get(b, 0)
    seen[b] = k + 1
    names.append(b if k == 0 else f"{b}#{k + 1}")
  return names


def _eval_copy(model: nnx.Module) -> tuple[Any, Any]:
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state, copy=True)
  copy.eval()
  copy.set_attributes(probe=False, raise_if_not_found=False)
  return nnx.split(copy)


def _batch_size(x, static_input: bool) -> int:
  return int(x.shape[0] if static_input else x.shape[1])


def trace_synaptic_ops(model: nnx.Module, x: Any) -> list[SynapticOp]:
  """The synaptic ops of ``model(x)`` (abstract; see the module docstring)."""
  static_input, num_steps = inputs.model_timing(model)
  graphdef, state = _eval_copy(model)
  sites: list = []
  jax.eval_shape(lambda st, x: sites.extend(_traced(graphdef, st, x, None)), state, x)
  if any(s is None for s in sites):
    raise ValueError("a conv / matmul inside a loop body (not the neuron scan) was found; the "
                     "energy trace counts only ops outside loops")
  batch = _batch_size(x, static_input)
  names = _name_sites(sites, _leaf_names(state))
  ops = []
  for s, name in zip(sites, names):
    steps = 1 if (static_input and s.all_raw) else num_steps
    per_image, rem = divmod(s.macs_total, batch * steps)
    if rem:
      raise ValueError(f"{name}: {s.macs_total} traced MACs are not a multiple of batch "
                       f"{batch} x steps {steps}")
    ops.append(SynapticOp(name=name, kind=s.kind, macs=per_image, steps=steps,
                          encoder=s.encoder, in_shapes=s.in_shapes, out_shape=s.out_shape))
  return ops


@functools.partial(jax.jit, static_argnums=0)
def _measure(graphdef, state, x):
  stats: list = []
  _traced(graphdef, state, x, stats)
  return stats


def energy_from_rates(ops: list[SynapticOp], rates: list[float | None], num_steps: int, *,
                      num_examples: int = 0, e_mac_pj: float = E_MAC_PJ,
                      e_ac_pj: float = E_AC_PJ, notes: list[str] | None = None
                      ) -> EnergyReport:
  """§7 from ops and input rates (None for encoders): the table and totals, per image."""
  rows = []
  for op, rate in zip(ops, rates):
    if op.encoder:
      energy_pj, sops, rate = e_mac_pj * op.ops_per_image, 0.0, None
    else:
      sops = float(rate) * op.steps * op.macs  # r_l * T * MACs_l
      energy_pj = e_ac_pj * sops
    rows.append(EnergyRow(name=op.name, kind=op.kind, encoder=op.encoder, macs=op.macs,
                          steps=op.steps, rate=None if rate is None else float(rate),
                          sops=sops, energy_mj=energy_pj / PJ_PER_MJ))
  return EnergyReport(rows=rows, num_steps=num_steps, num_examples=num_examples,
                      e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj, notes=list(notes or []))


def measure_energy(model: nnx.Module, batches: Iterable[Any], *, max_batches: int | None = None,
                   e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> EnergyReport:
  """Energy per image of ``model`` (eval mode) measured on ``batches`` (see module docstring)."""
  static_input, num_steps = inputs.model_timing(model)
  graphdef, state = _eval_copy(model)
  ops = None
  sums = None
  total = 0
  for x, n in inputs.iterate_inputs(batches, static_input, max_batches):
    if ops is None:
      ops = trace_synaptic_ops(nnx.merge(graphdef, state), jax.ShapeDtypeStruct(x.shape,
                                                                                 x.dtype))
      sums = [dict(a=0.0, b=0.0) for _ in ops]
    stats = jax.device_get(_measure(graphdef, state, x))
    for s, op, acc in zip(stats, ops, sums):
      if "abs_products" in s:
        acc["a"] += float(s["abs_products"])
        acc["b"] += float(op.ops_per_image * n)
      else:
        acc["a"] += float(s["abs_sum"])
        acc["b"] += float(s["numel"])
    total += n
  if ops is None:
    raise ValueError("measure_energy needs at least one non-empty batch")
  rates = [None if op.encoder else acc["a"] / max(acc["b"], 1.0) for op, acc in zip(ops, sums)]
  notes = []
  if any(op.kind == "matmul" for op in ops):
    notes.append("matmul rows (activation x activation): rate = sum|a||b| / (T * MACs)")
  return energy_from_rates(ops, rates, num_steps, num_examples=total, e_mac_pj=e_mac_pj,
                           e_ac_pj=e_ac_pj, notes=notes)


def _fmt_int(n: float) -> str:
  return f"{n:,.0f}"


def energy_markdown(report: EnergyReport) -> str:
  lines = [
      f"Energy per image (METHOD.md §7): **{report.energy_mj:.4g} mJ** "
      f"(E_MAC = {report.e_mac_pj} pJ, E_AC = {report.e_ac_pj} pJ, T = {report.num_steps}, "
      f"{report.num_examples} test examples); ANN twin {report.ann_energy_mj:.4g} mJ.",
      "",
      "| layer | kind | MACs / step | steps | input rate | SOPs | energy (mJ) |",
      "|---|---|---:|---:|---:|---:|---:|",
  ]
  for r in report.rows:
    kind = f"{r.kind} (MAC)" if r.encoder else r.kind
    rate = "analog" if r.rate is None else f"{r.rate:.4f}"
    sops = "—" if r.encoder else _fmt_int(r.sops)
    lines.append(f"| {r.name} | {kind} | {_fmt_int(r.macs)} | {r.steps} | {rate} | {sops} | "
                 f"{r.energy_mj:.4g} |")
  lines.append(f"| **total** | | {_fmt_int(report.total_macs)} | | | "
               f"{_fmt_int(report.total_sops)} | **{report.energy_mj:.4g}** |")
  lines += [f"", f"Encoder MACs: {_fmt_int(report.encoder_macs)}."]
  lines += [f"Note: {n}." for n in report.notes]
  return "\n".join(lines) + "\n"


def write_energy(report: EnergyReport, workdir: str) -> tuple[str, str]:
  """Writes ``energy.json`` and ``energy.md`` into ``workdir``; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  json_path = os.path.join(workdir, "energy.json")
  md_path = os.path.join(workdir, "energy.md")
  with open(json_path, "w") as f:
    json.dump(report.to_json(), f, indent=2)
  with open(md_path, "w") as f:
    f.write(energy_markdown(report))
  return json_path, md_path
