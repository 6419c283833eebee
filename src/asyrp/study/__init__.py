"""Studies: experiment families run end to end, their one results file, and the tables and figures made from it.

Layers inside (arrows point down): ``cli_*`` (argparse, printing) → ``runner`` / ``plan`` → ``collect`` →
``state`` → ``families`` → ``variables``; ``figure_plan`` → ``grids`` / ``plots`` → ``tables`` / ``tags`` →
``results``. The study calls the pipeline modules (``asyrp.train``, ``asyrp.edit``, ``asyrp.metrics``) and never
``asyrp.cli``.
"""
