"""Studies: experiment families run end to end, their one results file, and the tables and figures made from it.

Layers inside (arrows point down): ``cli_*`` (argparse, printing) → ``runner`` → ``family_results`` → ``state`` →
``families`` → ``variables``; ``plan`` → ``state``; ``family_results`` → ``collect`` → ``results`` (the one writer
of results.json); ``figure_plan`` → ``plots`` → ``grids`` → ``tags`` → ``results``; ``tables`` → ``tags``. The
report and figure side (``collect``, ``results``, ``tags``, ``tables``, ``grids``, ``plots``, ``figure_plan``) does
not import torch. The study calls the pipeline modules (``asyrp.pipeline.train``, ``asyrp.pipeline.edit``, ``asyrp.metrics``) and never
``asyrp.cli``.
"""
