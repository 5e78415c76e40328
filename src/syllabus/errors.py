"""The one base of every error syllabus raises on purpose.

Each module's error (``ParamsError``, ``RunError``, ``ModelError``, ...) derives from ``SyllabusError``
and from the built-in error it always was (``ValueError``, ``RuntimeError``, ...), so existing
``except`` clauses keep working. Its message names what went wrong (file, key, row) and the fix, so
``syllabus`` prints it as it is, without a traceback.
"""

from __future__ import annotations


class SyllabusError(Exception):
    """An error with a message meant for the user: what went wrong, where, and how to fix it."""
