"""The method as steps on files: inversion cache, training a direction, editing, evaluation, and the one record of
what a run is (run_record). Imports models, maths and io; never the CLI."""
