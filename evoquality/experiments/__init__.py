"""Experiment code shared by the benchmarks, the learning checks in tests and their calibration
script (`benchmarks/learning_checks.py`): nothing here runs in a stage or an executor."""
