"""Helpers shared by the tests (never test modules themselves): runs of the CLI, chat templates, crash
hooks, multi-process launches, stand-in reward models and judges, TRL parity drivers."""
