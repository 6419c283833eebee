"""Studies: experiment families run end to end, their one results file, and the tables and figures made from it.

Layers inside (arrows point down): ``cli_*`` (argparse, printing) → ``runner`` / ``plan`` → ``collect`` →
``state`` → ``families`` → ``variables``; ``figure_plan`` → ``plots`` → ``grids`` → ``tags`` → ``results``;
``tables`` → ``tags``; ``collect`` → ``results`` (the one writer of results.json). The study calls the pipeline modules (``asyrp.train``, ``asyrp.edit``, ``asyrp.metrics``) and never
``asyrp.cli``.
"""
