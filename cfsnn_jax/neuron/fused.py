"""The neuron's fast path: the time loop of ``neurons.neuron_step`` with a fused BPTT.

Contract:
- ``run_neuron(x_TB, spec, ..., bptt="fused")``: the same values and gradients as the
  reference ``neurons.run_neuron`` (tests/test_performance.py compares them). ``bptt="fused"``
  is a ``custom_vjp`` whose backward is one hand-written reverse scan that keeps only H (and
  the per-step thresholds / sharpness) from the forward; ``bptt="autodiff"`` is the reference.
- ``run_neuron_with_stats(...) -> (S_TB, H_TB or None, NeuronStats)``: also the per-step PN
  moments and firing rate, inside the custom_vjp (``stacked_moments``: reductions over the
  stacked steps); their cotangents enter the backward scan as ``[T]`` vectors, so no
  ``[T, B, ...]`` gradient of H is materialised for them. ``H_TB``
  only with ``keep_potential`` (analysis probes).
- ``unroll=AUTO`` (what a layer passes when none is configured): the lowering platform picks
  the forward's time loop (``backends.with_time_loop_unroll``: ``default_unroll(T)`` where
  lowered for the CPU, ``lax.scan`` elsewhere); the backward is a reverse scan either way,
  its inputs tied to the cotangent in the CPU branch only (``backends.with_backend_schedule``).

Backward per step, t = T-1 .. 0, with du = dL/du_t carried from step t+1:
  dh = gH + (soft: du | hard: du (1 - f));   ds = gS (+ soft: -theta du | hard, binary:
  du (v_r - h), when not detached);  dh += ds sum_k g(h - k theta) (+ the fired spike's
  surrogate for hard multi-level resets);  dx = c dh;  du' = lam dh;
  dlam += sum dh u' (- sum dh x for decay_input);  dalpha_t, dtheta_t as in ``spike``.
  gH includes the cotangents of the statistics (per-step [T] vectors).
Residuals: H, the thresholds and sharpness used, lam (and x for decay_input); u' and s are
recomputed from H. The backend's schedule (``backends``; on XLA:CPU measured in
docs/PERFORMANCE.md): the forward's default ``unroll`` is ``backends.time_loop_unroll(T)``; the
backward's inputs are tied to the cotangent (``backends.after_cotangent``) so none of its work
is hoisted into the forward pass. On every backend the backward overwrites gS with dx in place.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from cfsnn_jax import backends
from cfsnn_jax.neuron import equations as neurons
from cfsnn_jax.errors import unknown_choice
from cfsnn_jax.neuron.spec import BPTT_MODES, NeuronSpec

Array = jax.Array


AUTO = "auto"  # unroll chosen by the lowering platform (what a layer passes by default)


def default_unroll(num_steps: int) -> int | bool:
  """``backends.time_loop_unroll``: the CPU branch's unroll, ``True`` (a Python time loop)
  for small T where the CPU schedule asks for it, else 1."""
  return backends.time_loop_unroll(num_steps)


def _full_unroll(unroll: int | bool | str, T: int) -> bool:
  if unroll == AUTO:
    return False
  return unroll is True or (unroll is not False and int(unroll) >= T)


def _check_bptt(bptt: str) -> None:
  if bptt not in BPTT_MODES:
    raise unknown_choice("bptt", bptt, BPTT_MODES)


def run_neuron(x_TB: Array, spec: NeuronSpec, *, alpha_T: Array, decay: Array | float,
               theta_T: Array | None = None, training: bool = True,
               unroll: int | bool = 1, bptt: str = "fused") -> tuple[Array, Array, Array]:
  """``neurons.run_neuron``'s contract; ``unroll=True`` (or ``>= T``) runs the forward as a
  Python loop, the backward is a reverse ``lax.scan`` in either case."""
  _check_bptt(bptt)
  if bptt == "autodiff" and unroll == AUTO:  # same scan either way: only its unroll differs
    def with_unroll(u):
      return lambda x, a, d, th: neurons.run_neuron(x, spec, alpha_T=a, decay=d, theta_T=th,
                                                    training=training, unroll=u)
    return backends.with_time_loop_unroll(with_unroll, x_TB.shape[0], x_TB, alpha_T,
                                          jnp.asarray(decay, jnp.float32), theta_T)
  if bptt == "autodiff":
    return neurons.run_neuron(x_TB, spec, alpha_T=alpha_T, decay=decay, theta_T=theta_T,
                              training=training, unroll=unroll)
  x_TB, alpha_T, decay, theta_T = neurons.prepare_inputs(x_TB, spec, alpha_T, decay, theta_T)
  S_TB, H_TB, theta_used_T, _, _ = _neuron_fused(x_TB, alpha_T, decay, theta_T, spec,
                                                 spec.adaptive and training, unroll, True, None)
  return S_TB, H_TB, theta_used_T


def run_neuron_with_stats(x_TB: Array, spec: NeuronSpec, *, alpha_T: Array,
                          decay: Array | float, theta_T: Array | None = None,
                          training: bool = True, unroll: int | bool = 1,
                          pn_kappa: float = 1.0, keep_potential: bool = False,
                          bptt: str = "fused") -> tuple[Array, Array | None, neurons.NeuronStats]:
  """``run_neuron`` plus the per-step ``NeuronStats`` (see the module docstring)."""
  _check_bptt(bptt)
  if bptt == "autodiff":  # the reference: statistics of the materialised H
    S_TB, H_TB, theta_used_T = run_neuron(x_TB, spec, alpha_T=alpha_T, decay=decay,
                                          theta_T=theta_T, training=training, unroll=unroll,
                                          bptt=bptt)
    moments = jax.vmap(lambda h, s: neurons.step_moments(h, s, float(pn_kappa)))(H_TB, S_TB)
  else:
    x_TB, alpha_T, decay, theta_T = neurons.prepare_inputs(x_TB, spec, alpha_T, decay, theta_T)
    S_TB, H_TB, theta_used_T, _, moments = _neuron_fused(
        x_TB, alpha_T, decay, theta_T, spec, spec.adaptive and training, unroll,
        keep_potential, float(pn_kappa))
  h_pos_T, h_neg_T, h_tanh_T, rate_T = moments
  stats = neurons.NeuronStats(h_pos_T, h_neg_T, h_tanh_T, jax.lax.stop_gradient(rate_T),
                              jax.lax.stop_gradient(theta_used_T))
  return S_TB, (H_TB if keep_potential else None), stats


def _fused_forward(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa):
  dtype = x_TB.dtype
  T = x_TB.shape[0]
  step_fn = functools.partial(
      neurons.neuron_step, lam=decay.astype(dtype),
      in_scale=(1 - decay).astype(dtype) if spec.decay_input else None, spec=spec,
      use_adaptive=use_adaptive, differentiable=False)

  def step(u_prev, inputs):
    u, (s, h, theta_t, alpha_t) = step_fn(u_prev, *inputs)
    return u, (s, h, theta_t, alpha_t)

  def loop(unroll):
    def run_loop(*xs):
      u = jnp.zeros(x_TB.shape[1:], dtype)
      if _full_unroll(unroll, T):
        ys, ins = [], []
        for t in range(T):
          ins.append(jax.tree.map(lambda a: a[t], xs))
          u, y = step(u, ins[-1])
          ys.append(y)
        S, H, theta, alpha = jax.tree.map(lambda *a: jnp.stack(a), *ys)
        # thresholds / sharpness the steps pass through unchanged are the inputs themselves
        # (as lax.scan forwards them), so both platform branches have the same outputs
        if all(y[2] is i[2] for y, i in zip(ys, ins)):
          theta = xs[2]
        if all(y[3] is i[1] for y, i in zip(ys, ins)):
          alpha = xs[1]
        return S, H, theta, alpha
      return jax.lax.scan(step, u, xs, unroll=unroll)[1]
    return run_loop

  xs = (x_TB, alpha_T, theta_T)
  if unroll == AUTO:  # inside the custom_vjp: the residuals are the same in both branches
    S_TB, H_TB, theta_used_T, alpha_used_T = backends.with_time_loop_unroll(loop, T, *xs)
  else:
    S_TB, H_TB, theta_used_T, alpha_used_T = loop(unroll)(*xs)
  moments = None if kappa is None else stacked_moments(H_TB, S_TB, kappa)
  return S_TB, H_TB, theta_used_T, alpha_used_T, moments


def stacked_moments(H_TB: Array, S_TB: Array, kappa: float) -> tuple[Array, Array, Array, Array]:
  """``neurons.step_moments`` of every step, vmapped over the stacked ``[T, ...]`` arrays
  after the time loop: four means over axes 1.. . Computed per step inside the unrolled loop,
  each of the 4 x T statistics re-evaluated the fused recurrence up to its step (ResNet-19
  TET step: 11.9 -> 9.6 GB accessed; neuron-forward thunks 459 -> 264 ms). Four means, not
  one variadic ``lax.reduce`` (8.9 GB): XLA:CPU hands single reductions to YNNPACK and runs
  a variadic one as its own serial loop (71 vs 85 ms per step; docs/PERFORMANCE.md)."""
  return jax.vmap(lambda h, s: neurons.step_moments(h, s, kappa))(H_TB, S_TB)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _neuron_fused(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, keep_potential,
                  kappa):
  S_TB, H_TB, theta_used_T, alpha_used_T, stats = _fused_forward(
      x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa)
  return S_TB, (H_TB if keep_potential else None), theta_used_T, alpha_used_T, stats


def _neuron_fused_fwd(x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll,
                      keep_potential, kappa):
  x_TB, alpha_T, decay, theta_T = (a.value for a in (x_TB, alpha_T, decay, theta_T))
  S_TB, H_TB, theta_used_T, alpha_used_T, stats = _fused_forward(
      x_TB, alpha_T, decay, theta_T, spec, use_adaptive, unroll, kappa)
  out = (S_TB, (H_TB if keep_potential else None), theta_used_T, alpha_used_T, stats)
  res = (H_TB, theta_used_T, alpha_used_T, decay, x_TB if spec.decay_input else None)
  return out, res


def _zero(ct: Any) -> bool:
  return isinstance(ct, jax.custom_derivatives.SymbolicZero)


def _neuron_fused_bwd(spec, use_adaptive, unroll, keep_potential, kappa, res, cts):
  H_TB, theta_used_T, alpha_used_T, decay, x_TB = res
  gS_TB, gH_TB, gtheta_T, _, gstats = cts
  dtype = H_TB.dtype
  f32 = jnp.float32
  T = H_TB.shape[0]
  n = H_TB[0].size  # elements per step (the statistics' means)
  lam = decay.astype(f32)
  c = (1 - decay).astype(f32) if spec.decay_input else None
  binary = spec.levels == 1 and not spec.signed
  detach = spec.detach_reset
  gS_TB = jnp.zeros(H_TB.shape, dtype) if _zero(gS_TB) else gS_TB.astype(dtype)
  g_pos, g_neg, g_tanh = ((None,) * 3 if gstats is None or _zero(gstats) else
                          tuple(None if _zero(g) else g for g in gstats[:3]))
  def backward(tied: bool):
    """The reverse scan; ``tied``: its inputs tied to the cotangent (the CPU branch)."""
    tie = backends.after_cotangent if tied else (lambda tree, g: tree)

    def run(gS_TB):
      # Nothing below may run before the cotangent exists (see backends.after_cotangent).
      theta_tied_T, alpha_tied_T, stat_cts = tie(
          (theta_used_T, alpha_used_T, (g_pos, g_neg, g_tanh)), gS_TB)

      def u_before(t):
        """u_{t-1} recomputed from H_{t-1} (0 before the first step), float32."""
        tp = jnp.maximum(t - 1, 0)
        h = jax.lax.dynamic_index_in_dim(H_TB, tp, keepdims=False)
        th = jax.lax.dynamic_index_in_dim(theta_tied_T, tp, keepdims=False).astype(dtype)
        s = neurons.staircase(h, th, spec.levels, spec.signed).astype(dtype)
        u = neurons.reset(h, s, th, None, spec).astype(f32)
        return jnp.where(t > 0, u, jnp.zeros_like(u))

      def step(carry, inputs):
        du, dlam, G = carry  # G: gS, overwritten in place with dx from the last step down
        t, theta_t, alpha_t, gp, gn, gt = inputs
        h = jax.lax.dynamic_index_in_dim(H_TB, t, keepdims=False)
        th_d = theta_t.astype(dtype)
        s = neurons.staircase(h, th_d, spec.levels, spec.signed).astype(f32)
        hc = h.astype(f32)
        th = th_d.astype(f32)
        al = alpha_t
        mag = jnp.abs(hc) if spec.signed else hc
        sgn = jnp.sign(hc) if spec.signed else None
        ds = jax.lax.dynamic_index_in_dim(G, t, keepdims=False).astype(f32)
        dh = (jnp.zeros_like(hc) if gH_TB is None or _zero(gH_TB) else
              jax.lax.dynamic_index_in_dim(gH_TB, t, keepdims=False).astype(f32))
        if gp is not None:
          dh = dh + (gp / n) * (hc > 0)
        if gn is not None:
          dh = dh - (gn / n) * (hc < 0)
        if gt is not None:
          dh = dh + (gt * kappa / n) * (1 - jnp.square(jnp.tanh(kappa * hc)))
        dalpha = jnp.zeros((), f32)
        dtheta = jnp.zeros((), f32)
        if spec.reset == "soft":
          dh = dh + du
          if not detach:
            ds = ds - th * du
          dtheta = dtheta - jnp.sum(s * du)
        else:
          fired = neurons.fired_indicator(h, s.astype(dtype), th_d, al, spec, False).astype(f32)
          dh = dh + du * (1 - fired)
          if not detach:
            dfired = du * (spec.v_reset - hc)
            if binary:
              ds = ds + dfired
            else:  # the one-level spike of |h|: its own surrogate term
              d1_h, d1_alpha, d1_theta = neurons.staircase_derivatives(mag, th, al, 1,
                                                                       spec.surrogate)
              dh = dh + dfired * d1_h * (sgn if spec.signed else 1.0)
              dalpha = dalpha + jnp.sum(dfired * d1_alpha)
              dtheta = dtheta + jnp.sum(dfired * d1_theta)
        d_h, d_alpha, d_theta = neurons.staircase_derivatives(mag, th, al, spec.levels,
                                                              spec.surrogate)
        dh = dh + ds * d_h
        ds_signed = ds * sgn if spec.signed else ds
        dalpha = dalpha + jnp.sum(ds_signed * d_alpha)
        dtheta = dtheta + jnp.sum(ds_signed * d_theta)
        dlam = dlam + jnp.sum(dh * u_before(t))
        if c is None:
          dx = dh
        else:
          x_t = jax.lax.dynamic_index_in_dim(x_TB, t, keepdims=False).astype(f32)
          dlam = dlam - jnp.sum(dh * x_t)
          dx = c * dh
        G = jax.lax.dynamic_update_index_in_dim(G, dx.astype(dtype), t, 0)
        return (lam * dh, dlam, G), (dalpha, dtheta)

      carry0 = tie((jnp.zeros(H_TB.shape[1:], f32), jnp.zeros((), f32)), gS_TB)
      xs = (jnp.arange(T), theta_tied_T, alpha_tied_T) + tuple(stat_cts)
      # The backward is never fully unrolled: XLA would fuse the T steps' recurrence into one
      # loop that re-evaluates it per output step (quadratic in T).
      bwd_unroll = 1 if unroll == AUTO or _full_unroll(unroll, T) else unroll
      (_, dlam, dx_TB), (dalpha_T, dtheta_T) = jax.lax.scan(
          step, carry0 + (gS_TB,), xs, reverse=True, unroll=bwd_unroll)
      return dlam, dx_TB, dalpha_T, dtheta_T
    return run

  # the lowering platform picks the schedule: the CPU branch ties, other platforms do not
  dlam, dx_TB, dalpha_T, dtheta_T = backends.with_backend_schedule(backward, gS_TB)
  if spec.surrogate_mode == "dynamic":  # alpha came from H's statistics (no gradient)
    dalpha_T = jnp.zeros_like(dalpha_T)
  if spec.adaptive:  # stop_gradient on the threshold
    dtheta_T = jnp.zeros_like(dtheta_T)
  elif not _zero(gtheta_T):  # fixed thresholds pass through to the theta_used output
    dtheta_T = dtheta_T + gtheta_T.astype(f32)
  return dx_TB, dalpha_T, dlam.astype(decay.dtype), dtheta_T


_neuron_fused.defvjp(_neuron_fused_fwd, _neuron_fused_bwd, symbolic_zeros=True)
