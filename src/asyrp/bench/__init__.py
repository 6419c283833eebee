"""The benchmark of training and editing (reference vs fast mode) and the numerical guard of the fast path.

Modules: :mod:`~asyrp.bench.timing` (throughput, memory, the whole benchmark record), :mod:`~asyrp.bench.flops` (FLOP
counting, device peaks), :mod:`~asyrp.bench.guard` (fast vs reference on the same inputs), :mod:`~asyrp.bench.models`
(the randomly initialised models, shared with the tests) and :mod:`~asyrp.bench.cli` (``asyrp bench``). The names
below are the package's public API; ``asyrp bench`` finds ``configure_parser`` / ``main`` here.
"""

from asyrp import diffusion as D  # noqa: F401
from asyrp import train as T  # noqa: F401
from asyrp.bench.cli import configure_parser, main, parse_overrides, results_path  # noqa: F401
from asyrp.bench.flops import (FLOPS_COUNTED, bf16_peak_tflops, count_flops, edit_flops_per_image,  # noqa: F401
                               train_flops_per_image)
from asyrp.bench.guard import (ATTRIBUTE, GUARD_BOUNDS, SPEED_FIELDS, T_0, T_BOOST, T_EDIT, log_values,  # noqa: F401
                               mode_config, numerical_guard, random_images, speed_switches)
from asyrp.bench.models import TINY_CLIP_CFG, TINY_UNET, BenchModels, build_models, random_entries  # noqa: F401
from asyrp.bench.timing import (SCHEMA, TRAIN_MODES, bench_edit, bench_train, device_info, edit_images,  # noqa: F401
                                format_table, memory_kind, run_benchmark)

# asyrp.train's training objects under the names the flat module gave them (callers of `asyrp.bench` before the split)
TrainSession = T.Session
make_direction = T.make_direction
apply_speed_settings = T.apply_speed_settings
