"""The spiking neuron's equations as pure JAX functions (METHOD.md §1, §2, §4).

Layout convention (stated once for the whole package): tensors are **time-major**. Letters
in array names:

| letter | meaning                                   | letter | meaning                    |
|--------|-------------------------------------------|--------|----------------------------|
| T      | time steps (axis 0 of a layer's input)    | K      | classes (logits)           |
| B      | batch                                     | L      | spiking layers / tokens     |
| C H W  | channels, height, width (images: HWC)     | N      | flattened elements (T*B)   |
| D      | levels (max spikes per step, spec field)  | S      | sampled potentials          |

``x_TB`` has shape ``[T, B, ...]``. Stateless layers fold time into the batch (``[T*B, ...]``);
only the neuron loops over ``T``.

Contract:
- ``NeuronSpec`` / presets / ``resolve_spec`` are data (``neuron_spec``, jax-free; re-exported).
- Surrogates ``SURROGATES[name]``: unit derivative ``phi`` and primitive ``G`` of ``z = alpha v``.
- ``spike(h, theta, alpha, levels, signed, surrogate)``: a ``jax.custom_vjp``; forward the
  exact D-level staircase, backward the surrogate ``sum_k g_alpha(h - k theta)``, with
  cotangents for ``alpha`` and ``theta`` as if the forward were ``sum_k G_alpha(h - k theta)``.
- DS-ATGO: ``adaptive_threshold``, ``dynamic_width``, ``dynamic_alpha`` (one step's statistics).
- ``neuron_step``: one charge / fire / reset step, shared by the reference scan below
  (``differentiable=True``: gradients by autodiff through ``spike``) and the fused fast path
  (``neurons_fused``: exact forward, hand-written backward scan).
- ``run_neuron(x_TB, spec, alpha_T, decay, theta_T)`` -> ``(S_TB, H_TB, theta_T)``: the
  reference scan; no hidden state. ``NeuronStats``: the per-step statistics a layer returns.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cfsnn_jax.neuron.spec import (  # noqa: F401  (re-exported: the neuron's data side)
    ACTIVATIONS, BPTT_MODES, CHARGES, DYNAMIC_STATS, NEURON_PRESETS, RESETS,
    SURROGATE_DEFAULT_ALPHA, SURROGATE_MODES, THRESHOLD_MODES, NeuronSpec, lif_decay,
    resolve_spec, spec_dict, validate_num_steps, validate_spec)

Array = jax.Array

# --------------------------------------------------------------------------------------------
# Surrogate families, written as functions of z = alpha * v:
#   unit derivative phi(z) = G'(z), so   g_alpha(v) = alpha * phi(alpha v)
#   and                                   dG_alpha(v)/d alpha = v * phi(alpha v).
# Overflow-free: the sigmoid's one exp is of -|z| <= 0; the others are rational / piecewise.
# --------------------------------------------------------------------------------------------


def _sigmoid_phi(z: Array) -> Array:
  # sigmoid(z) sigmoid(-z) = e / (1 + e)^2 with e = exp(-|z|) in (0, 1]: one exp, no overflow.
  e = jnp.exp(-jnp.abs(z))
  return e / jnp.square(1.0 + e)


def _atan_phi(z: Array) -> Array:
  return 0.5 / (1.0 + jnp.square(0.5 * math.pi * z))


def _atan_prim(z: Array) -> Array:
  return jnp.arctan(0.5 * math.pi * z) / math.pi + 0.5


def _rect_phi(z: Array) -> Array:
  return (jnp.abs(z) < 0.5).astype(z.dtype)


def _tri_prim(z: Array) -> Array:
  zc = jnp.clip(z, -1.0, 1.0)
  return jnp.where(zc < 0, 0.5 * jnp.square(1.0 + zc), 1.0 - 0.5 * jnp.square(1.0 - zc))


class Surrogate(NamedTuple):
  phi: Callable[[Array], Array]  # G'(z), z = alpha * v
  primitive: Callable[[Array], Array]  # G(z)
  default_alpha: float


_FAMILIES = {
    "sigmoid": (_sigmoid_phi, jax.nn.sigmoid),
    "atan": (_atan_phi, _atan_prim),
    "rectangular": (_rect_phi, lambda z: jnp.clip(z + 0.5, 0.0, 1.0)),
    "triangle": (lambda z: jnp.maximum(0.0, 1.0 - jnp.abs(z)).astype(z.dtype), _tri_prim),
}
SURROGATES: dict[str, Surrogate] = {
    name: Surrogate(*_FAMILIES[name], alpha0) for name, alpha0 in SURROGATE_DEFAULT_ALPHA.items()}


def surrogate_grad(name: str, v: Array, alpha: Array) -> Array:
  """g_alpha(v): the surrogate derivative of a unit step at v = 0."""
  v = jnp.asarray(v, jnp.result_type(v, jnp.float32))
  return alpha * SURROGATES[name].phi(alpha * v)


def surrogate_primitive(name: str, v: Array, alpha: Array) -> Array:
  """G_alpha(v): the smooth step whose derivative is ``surrogate_grad``."""
  v = jnp.asarray(v, jnp.result_type(v, jnp.float32))
  return SURROGATES[name].primitive(alpha * v)


# --------------------------------------------------------------------------------------------
# The spike: exact D-level staircase forward, surrogate backward (custom_vjp).
# --------------------------------------------------------------------------------------------


def staircase(h: Array, theta: Array, levels: int, signed: bool) -> Array:
  """Exact forward of METHOD.md §1 (fire): clip(floor(h/theta), 0, D), optionally signed.
  The binary spike (D = 1, unsigned) is ``[h >= theta]``, defined for every theta (also
  <= 0, as SpikingJelly and the DS-ATGO code); the staircase needs theta > 0 (an adaptive one
  is floored at ``ADAPTIVE_THETA_FLOOR`` for it, ``step_threshold_alpha``)."""
  if levels == 1 and not signed:
    return (h >= theta).astype(h.dtype)
  if signed:
    return jnp.sign(h) * jnp.clip(jnp.floor(jnp.abs(h) / theta), 0, levels)
  return jnp.clip(jnp.floor(h / theta), 0, levels)


def smooth_staircase(h: Array, theta: Array, alpha: Array, levels: int, signed: bool,
                     surrogate: str) -> Array:
  """The smooth primitive sum_k G_alpha(h - k theta) whose gradients the spike's backward uses."""
  ks = jnp.arange(1, levels + 1, dtype=h.dtype)
  mag = jnp.abs(h) if signed else h
  v = mag[..., None] - ks * jnp.asarray(theta, h.dtype)[..., None]
  out = surrogate_primitive(surrogate, v, jnp.asarray(alpha, h.dtype)).sum(-1)
  return jnp.sign(h) * out if signed else out


def staircase_derivatives(mag: Array, theta: Array, alpha: Array, levels: int,
                          surrogate: str) -> tuple[Array, Array, Array]:
  """d/dh, d/dalpha, d/dtheta of ``sum_k G_alpha(mag - k theta)`` (float32 inputs)."""
  phi = SURROGATES[surrogate].phi
  d_h = d_alpha = d_theta = jnp.zeros_like(mag)
  for k in range(1, levels + 1):  # D is small and static: unrolled, fused by XLA
    v = mag - k * theta
    p = phi(alpha * v)
    d_h = d_h + alpha * p  # d/dh of sign(h) G(|h| - k theta) is g(|h| - k theta): sign^2 = 1
    d_alpha = d_alpha + v * p
    d_theta = d_theta - k * alpha * p
  return d_h, d_alpha, d_theta


def _sum_to_shape(x: Array, shape: tuple[int, ...], dtype: Any) -> Array:
  x = x.astype(jnp.float32)
  if x.shape != tuple(shape):
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
    x = x.sum(axis=axes, keepdims=False)
    x = x.reshape(shape)
  return x.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def spike(h: Array, theta: Array, alpha: Array, levels: int, signed: bool,
          surrogate: str) -> Array:
  """D-level (optionally signed) spike with a learnable-shape surrogate gradient.

  ``theta`` and ``alpha`` broadcast against ``h`` (scalars in the neuron scan). The output
  has ``h``'s dtype. Backward returns cotangents for ``h``, ``theta`` and ``alpha`` with their
  own shapes and dtypes.
  """
  return staircase(h, jnp.asarray(theta, h.dtype), levels, signed).astype(h.dtype)


def _spike_fwd(h, theta, alpha, levels, signed, surrogate):
  return spike(h, theta, alpha, levels, signed, surrogate), (h, theta, alpha)


def _spike_bwd(levels, signed, surrogate, res, g_out):
  h, theta, alpha = res
  compute = jnp.promote_types(h.dtype, jnp.float32)
  hc = h.astype(compute)
  mag = jnp.abs(hc) if signed else hc
  d_h, d_alpha, d_theta = staircase_derivatives(
      mag, jnp.asarray(theta, compute), jnp.asarray(alpha, compute), levels, surrogate)
  go = g_out.astype(compute)
  if signed:
    d_alpha = d_alpha * jnp.sign(hc)
    d_theta = d_theta * jnp.sign(hc)
  ct_h = (go * d_h).astype(h.dtype)
  ct_alpha = _sum_to_shape(go * d_alpha, jnp.shape(alpha), jnp.result_type(alpha))
  ct_theta = _sum_to_shape(go * d_theta, jnp.shape(theta), jnp.result_type(theta))
  return ct_h, ct_theta, ct_alpha


spike.defvjp(_spike_fwd, _spike_bwd)

# --------------------------------------------------------------------------------------------
# DS-ATGO statistics (METHOD.md §4).
# --------------------------------------------------------------------------------------------

ADAPTIVE_THETA_FLOOR = 1e-3  # smallest adaptive threshold of a multi-level / signed neuron
MIN_WIDTH = 1e-3  # smallest DS-ATGO surrogate width, in units of the base width k


def adaptive_threshold(h: Array, fc: float) -> Array:
  """theta_t = f_c (mean(H_t) + std(H_t)) over every axis (batch, channels, space); unbiased
  std; no gradient. Under jit on a sharded H this is the global-batch statistic."""
  h = jax.lax.stop_gradient(h).astype(jnp.float32)
  return fc * (jnp.mean(h) + jnp.std(h, ddof=1))


def dynamic_width(delta: Array, base_width: float) -> Array:
  """DS-ATGO width rule: k (1 - tanh(1 - delta)) if delta < 1 else k (1 + tanh(delta - 1)),
  floored at ``MIN_WIDTH * k`` (1 - tanh underflows to 0 for delta below about -8, e.g. a very
  negative threshold statistic: an infinite sharpness would make the surrogate NaN)."""
  width = jnp.where(delta < 1, base_width * (1 - jnp.tanh(1 - delta)),
                    base_width * (1 + jnp.tanh(delta - 1)))
  return jnp.maximum(width, MIN_WIDTH * base_width)


def dynamic_alpha(h: Array, theta_t: Array, spec: NeuronSpec) -> Array:
  """DS-ATGO's sharpness for one step, ``1 / width(stat)`` with ``stat = std(H_t)`` (unbiased,
  over every axis of ``h``) or ``theta_t`` (``spec.dynamic_stat``); no gradient."""
  stat = (jnp.std(jax.lax.stop_gradient(h).astype(jnp.float32), ddof=1)
          if spec.dynamic_stat == "std" else theta_t)
  return jax.lax.stop_gradient(1.0 / dynamic_width(stat, spec.dynamic_base_width))


def step_threshold_alpha(h: Array, theta_t: Array, alpha_t: Array, spec: NeuronSpec,
                         use_adaptive: bool) -> tuple[Array, Array]:
  """The threshold and sharpness a step uses (DS-ATGO: from H_t's statistics, no gradient).

  A non-finite batch statistic (a diverged H, or a single element) is rejected: the step
  uses ``theta_t`` (the layer passes its EMA) instead. Multi-level and signed neurons use
  ``max(theta, ADAPTIVE_THETA_FLOOR)`` (their staircase needs theta > 0); the binary spike
  takes any sign."""
  if use_adaptive:
    batch_theta = adaptive_threshold(h, spec.adaptive_fc)
    theta_t = jnp.where(jnp.isfinite(batch_theta), batch_theta,
                        jnp.asarray(theta_t, jnp.float32))
  if spec.adaptive and (spec.levels > 1 or spec.signed):
    theta_t = jnp.maximum(theta_t, ADAPTIVE_THETA_FLOOR)
  theta_t = jax.lax.stop_gradient(theta_t) if spec.adaptive else theta_t
  if spec.surrogate_mode == "dynamic":
    alpha_t = dynamic_alpha(h, theta_t, spec)
  return theta_t, alpha_t


# --------------------------------------------------------------------------------------------
# Charge / fire / reset: one step, and the reference scan over time.
# --------------------------------------------------------------------------------------------


class NeuronStats(NamedTuple):
  """Per-step statistics of one spiking layer, each ``[T]`` float32 (``[L, T]`` stacked)."""
  h_pos_T: Array  # mean(relu(H_t)) over batch and features   (PN loss, mean variant)
  h_neg_T: Array  # mean(relu(-H_t))                           (PN loss, mean variant)
  h_tanh_T: Array  # mean(tanh(kappa H_t))                     (PN loss, sign variant)
  rate_T: Array  # mean(|S_t|): spikes per element (no gradient)
  theta_T: Array  # threshold used at each step (no gradient)


def step_moments(h: Array, s: Array, kappa: float) -> tuple[Array, Array, Array, Array]:
  """One step's ``(mean relu(h), mean relu(-h), mean tanh(kappa h), mean |s|)``, float32."""
  h32 = h.astype(jnp.float32)
  return (jnp.mean(jax.nn.relu(h32)), jnp.mean(jax.nn.relu(-h32)),
          jnp.mean(jnp.tanh(kappa * h32)), jnp.mean(jnp.abs(s.astype(jnp.float32))))


def fire(h: Array, th: Array, alpha: Array, levels: int, signed: bool, spec: NeuronSpec,
         differentiable: bool) -> Array:
  """The staircase of ``h``: through ``spike`` (surrogate gradient) or exact values only."""
  if differentiable:
    return spike(h, th, alpha, levels, signed, spec.surrogate)
  return staircase(h, th, levels, signed).astype(h.dtype)


def fired_indicator(h: Array, s: Array, th: Array, alpha: Array, spec: NeuronSpec,
                    differentiable: bool) -> Array:
  """``[S != 0]`` for hard reset: ``S`` itself for the binary spike; for multi-level / signed
  spikes the one-level spike of ``|H|`` (same surrogate), so the reset keeps a gradient."""
  if spec.levels == 1 and not spec.signed:
    return s
  mag = jnp.abs(h) if spec.signed else h
  return fire(mag, th, alpha, 1, False, spec, differentiable)


def reset(h: Array, s: Array, th: Array, alpha: Array, spec: NeuronSpec,
          differentiable: bool = False) -> Array:
  """u_t from h_t and s_t: soft ``h - s theta``; hard ``h (1 - f) + v_reset f``."""
  if spec.reset == "soft":
    return h - (jax.lax.stop_gradient(s) if spec.detach_reset else s) * th
  f = fired_indicator(h, s, th, alpha, spec, differentiable)
  f = jax.lax.stop_gradient(f) if spec.detach_reset else f
  return h * (1 - f) + spec.v_reset * f


def neuron_step(u_prev: Array, x_t: Array, alpha_t: Array, theta_t: Array, *, lam: Array,
                in_scale: Array | None, spec: NeuronSpec, use_adaptive: bool,
                differentiable: bool) -> tuple[Array, tuple[Array, Array, Array, Array]]:
  """One step: ``h = lam u' + c x`` (c = 1, or 1 - lam for decay_input); threshold and
  sharpness; ``s = staircase(h)``; reset. Returns ``(u_t, (s_t, h_t, theta_t, alpha_t))``."""
  h = lam * u_prev + (x_t * in_scale if in_scale is not None else x_t)
  theta_t, alpha_t = step_threshold_alpha(h, theta_t, alpha_t, spec, use_adaptive)
  th = theta_t.astype(h.dtype)
  s = fire(h, th, alpha_t, spec.levels, spec.signed, spec, differentiable)
  u = reset(h, s, th, alpha_t, spec, differentiable)
  return u, (s, h, theta_t, jnp.asarray(alpha_t, jnp.float32))


def prepare_inputs(x_TB: Array, spec: NeuronSpec, alpha_T: Array, decay: Array | float,
                   theta_T: Array | None) -> tuple[Array, Array, Array, Array]:
  """``(x_TB, alpha_T, decay, theta_T)`` as float32 ``[T]`` vectors and a scalar decay."""
  T = x_TB.shape[0]
  if theta_T is None:
    theta_T = jnp.full((T,), spec.threshold, jnp.float32)
  alpha_T = jnp.broadcast_to(jnp.asarray(alpha_T, jnp.float32), (T,))
  theta_T = jnp.broadcast_to(jnp.asarray(theta_T, jnp.float32), (T,))
  return x_TB, alpha_T, jnp.asarray(decay, jnp.float32), theta_T


def run_neuron(x_TB: Array, spec: NeuronSpec, *, alpha_T: Array, decay: Array | float,
               theta_T: Array | None = None, training: bool = True,
               unroll: int | bool = 1) -> tuple[Array, Array, Array]:
  """Runs the neuron over time: the reference (``jax`` differentiates the scan of
  ``neuron_step``). ``neurons_fused.run_neuron`` is the same function with a fused backward.

  Args:
    x_TB: input current ``[T, B, ...]``.
    spec: the neuron setting.
    alpha_T: surrogate sharpness per step, shape ``[T]`` (ignored for ``dynamic``).
    decay: lambda (scalar; PLIF passes sigmoid(w), differentiable).
    theta_T: threshold per step ``[T]``. Fixed mode: the base threshold; adaptive mode: the
      EMA used at evaluation (ignored when ``training``).
    training: adaptive threshold computed from H_t statistics when True.
    unroll: ``lax.scan``'s ``unroll``.

  Returns:
    ``S_TB`` (spikes, x's dtype), ``H_TB`` (pre-fire potential), ``theta_T`` (thresholds used,
    float32; adaptive training mode: the fresh batch statistics for the EMA update).
  """
  x_TB, alpha_T, decay, theta_T = prepare_inputs(x_TB, spec, alpha_T, decay, theta_T)
  dtype = x_TB.dtype
  step = functools.partial(
      neuron_step, lam=decay.astype(dtype),
      in_scale=(1 - decay).astype(dtype) if spec.decay_input else None, spec=spec,
      use_adaptive=spec.adaptive and training, differentiable=True)
  u0 = jnp.zeros(x_TB.shape[1:], dtype)
  _, (S_TB, H_TB, theta_used_T, _) = jax.lax.scan(
      lambda u, xs: step(u, *xs), u0, (x_TB, alpha_T, theta_T), unroll=unroll)
  return S_TB, H_TB, theta_used_T


def alpha_from_rho(rho: Array) -> Array:
  """alpha = softplus(rho) (positive)."""
  return jax.nn.softplus(rho)


def rho_for_alpha(alpha0: float) -> float:
  """Inverse softplus, so that softplus(rho) == alpha0 at initialisation."""
  return float(alpha0 + math.log(-math.expm1(-alpha0)))
