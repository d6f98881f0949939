"""The one error type for input or state a user can fix.

Every error that subclasses ``UserError`` ends ``lit-align`` with one line, ``lit-align: error: <message>``, and
exit status 2 (``LIT_ALIGN_DEBUG=1`` shows the traceback instead). Its message names what is wrong (the file, row
and field; the setting; the checkpoint) and how to fix it. Raise it, or a subclass, instead of a bare
``RuntimeError`` wherever the cause is the user's input, configuration or files on disk.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, configuration or on-disk state; the message says what and how to fix it."""
