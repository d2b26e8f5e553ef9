"""Named XLA:CPU option sets for the round-robin comparisons (``benchmarks.op_profile``,
``benchmarks.xla_options``), as per-executable ``compiler_options`` (XLA ``DebugOptions``
fields; repeated enums take comma-joined full enum names here, unlike ``XLA_FLAGS``).

``tuned`` is what ``cfsnn_jax.backends.xla_cpu`` applies to CPU runs of the CLI (tested equal in
``tests/test_performance.py``); the others are the alternatives measured against it in
docs/PERFORMANCE.md.
"""

from __future__ import annotations

from typing import Any

from cfsnn_jax.backends import xla_cpu

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_DOT, _CONV, _REDUCE = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", "LIBRARY_FUSION_TYPE_REDUCE")

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # jaxlib's own defaults (YNNPACK dots, convolutions and reductions)
    "tuned": xla_cpu.compiler_options(),  # what the CLI applies
    "ynn_conv_off": {_YNN: f"{_DOT},{_REDUCE}"},  # convolutions on XLA's Eigen path
    "ynn_off": {_YNN: ""},  # no YNNPACK at all (Eigen dots, XLA reductions)
    "ynn_conv_only": {_YNN: _CONV},
    "vector512": dict(xla_cpu.compiler_options(), xla_cpu_prefer_vector_width=512),
    "fast_math": dict(xla_cpu.compiler_options(), xla_cpu_enable_fast_math=True),
    "no_concurrency_scheduler": dict(xla_cpu.compiler_options(),
                                     xla_cpu_enable_concurrency_optimized_scheduler=False),
    "no_multi_output_fusion": dict(xla_cpu.compiler_options(),
                                   xla_cpu_use_multi_output_fusion=False),
}
