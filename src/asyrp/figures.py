"""The figures' API in one namespace, for notebooks (``from asyrp import figures``): grids, plots, the figure plan.

The work lives in :mod:`asyrp.study` (grids: the pixel-exact image grids; plots: the line plots; figure_plan: every
figure a set of results supports); the command ``asyrp figures`` is :mod:`asyrp.cli.figures`. Imports no torch.
"""

from asyrp.study.figure_plan import FUNCTIONS, is_shapes_family, logs_by_label, make_figures, plan_figures  # noqa: F401
from asyrp.study.grids import (FONT_SIZE, IMAGE_SUFFIXES, MIN_TILE, PAD, UNSEEN_DOMAIN, ablation_grid,  # noqa: F401
                               compose, editing_grid, image_names, image_path, linearity_sweep, load_image,
                               pick_folder, steps_comparison, strength_folders, tile_box)
from asyrp.study.plots import METRIC_LABELS, loss_curves, loss_series, metric_vs_strength  # noqa: F401
