"""Objectives and a callback written as a user writes them, in their own module, against lit-align's public seams.

Each one subclasses a base and implements its one hook: nothing private is overridden. ``tests/cli/test_extensions.py``
trains every one of them through the ``lit-align`` command line.
"""
