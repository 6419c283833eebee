"""``asyrp run-experiment``: train → edit → evaluate every run of an experiment family and write its results.json.

The work lives in :mod:`asyrp.study` (families, runner, plan, family_results, results); this module keeps the command's
entry point (``configure_parser`` / ``main``) and the public names under their old import path.
"""

from asyrp.study.cli_experiments import configure_parser, main  # noqa: F401
from asyrp.study.collect import summarize_eval  # noqa: F401
from asyrp.study.families import (EVAL_DEFAULTS, EVAL_SETTING_KEYS, FAMILY_KEYS, NAME_RE, RUN_KEYS,  # noqa: F401
                                  SHARED_KEYS, STAGES, TEXT_KEYS, EditJob, Family, Run, find_config, load_family)
from asyrp.study.family_results import collect_family as collect_results  # noqa: F401
from asyrp.study.family_results import ARCH_FIELDS, config_tags  # noqa: F401
from asyrp.study.plan import plan  # noqa: F401
from asyrp.study.results import RESULTS_SCHEMA as SCHEMA  # noqa: F401
from asyrp.study.runner import run_experiment  # noqa: F401
from asyrp.study.variables import ExperimentError, deep_merge, expand_variables, parse_overrides  # noqa: F401
