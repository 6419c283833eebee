"""The report's API in one namespace, for notebooks (``from asyrp import report``): results files, tags, tables.

The work lives in :mod:`asyrp.study` (results: the schema and reader; collect: results from edit folders; tags:
entries and tag analysis; tables: the Markdown); the command ``asyrp report`` is :mod:`asyrp.cli.report`. Imports no
torch.
"""

from asyrp.study.collect import collect_folders as collect_results  # noqa: F401
from asyrp.study.collect import find_eval_files, infer_tags, metrics_from_eval, train_summary  # noqa: F401
from asyrp.study.results import (EVAL_SCHEMA, METRIC_KEYS, RESULTS_SCHEMA, ResultsError, as_results,  # noqa: F401
                                 load_results, validate_results)
from asyrp.study.tables import (ABLATION_COLUMNS, FID_NOTE, FID_SMALL_N, MARKER, ablation_table,  # noqa: F401
                                anchors_table, bias_table, build_tables, eval_table, eval_table_name, fid_table,
                                fid_cell, kid_cell, load_anchors, markdown_table, replace_blocks, sdir_cell, sdir_table)
from asyrp.study.tags import (PER_RUN_TAGS, REPRODUCTION_TAGS, TAG_ORDER, Entry, constant_tags,  # noqa: F401
                              dependent_tags, entries, family_style, format_tag, format_value, slug, tag_sort_key,
                              value_sort_key, varied_tags)
