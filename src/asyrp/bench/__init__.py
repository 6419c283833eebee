"""The benchmark of training and editing (reference vs fast mode) and the numerical guard of the fast path.

Modules: :mod:`~asyrp.bench.timing` (throughput, memory, the whole benchmark record), :mod:`~asyrp.bench.flops` (FLOP
counting, device peaks), :mod:`~asyrp.bench.guard` (fast vs reference on the same inputs), :mod:`~asyrp.bench.models`
(the randomly initialised models, shared with the tests). The names below are the package's public API; the command
``asyrp bench`` is :mod:`asyrp.cli.bench`.
"""

from asyrp.bench.flops import (FLOPS_COUNTED, bf16_peak_tflops, count_flops, edit_flops_per_image,  # noqa: F401
                               train_flops_per_image)
from asyrp.bench.guard import (ATTRIBUTE, GUARD_BOUNDS, SPEED_FIELDS, T_0, T_BOOST, T_EDIT, log_values,  # noqa: F401
                               mode_config, numerical_guard, random_images, speed_switches)
from asyrp.bench.models import TINY_CLIP_CFG, TINY_UNET, BenchModels, build_models, random_entries  # noqa: F401
from asyrp.bench.timing import (SCHEMA, TRAIN_MODES, bench_edit, bench_train, device_info, edit_images,  # noqa: F401
                                format_table, memory_kind, run_benchmark)
