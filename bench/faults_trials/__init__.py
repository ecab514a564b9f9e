"""Reliability trials (issue 7): kills, corrupt inputs, broken shards, bad command lines, write scope.

Each module has `run(work_folder, ...) -> KindReport`; `bench/faults.py` runs them all with the issue's
counts and prints the table, and `tests/reliability/` runs the same code with smaller counts.
"""
