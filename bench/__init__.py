"""Benchmarks: each module prints its figures (recorded in BENCHMARKS.md with machine, date and command).

Run them as modules from the repository root, ``python -m bench.<name>`` (``make bench`` runs the
quick ones); they import the project's packages like any other caller, without ``sys.path`` edits.
"""
