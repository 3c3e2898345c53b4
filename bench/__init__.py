"""
muc_guard's benchmark suite (not part of the test run).

Run it with ``python -m bench`` (or ``python bench/run.py``) from the
repository root. It starts its own private Prosody on 127.0.0.1, runs every
scenario, prints a table and writes ``bench/RESULTS.md``. ``--smoke`` runs
tiny sizes in a few seconds (the test suite does that, so the suite cannot
rot); ``--only 1,3`` runs some scenarios. See ``bench/run.py``.

This package must stay light to import: ``bench.botproc`` runs as a child
process whose start-up time is measured (scenario 8).
"""
