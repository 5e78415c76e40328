"""The one base of every error syllabus raises on purpose.

Each module's error (``ParamsError``, ``RunError``, ``ModelError``, ...) derives from ``SyllabusError``
and from the built-in error it always was (``ValueError``, ``RuntimeError``, ...), so existing
``except`` clauses keep working. Its message names what went wrong (file, key, row) and the fix, so
``syllabus`` prints it as it is, without a traceback.
"""

from __future__ import annotations


class SyllabusError(Exception):
    """An error with a message meant for the user: what went wrong, where, and how to fix it."""


def utf8_problem(data: bytes) -> str:
    """Where ``data`` (a file's bytes) stops being UTF-8, in words: the byte, its offset and line."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"not UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start}, line {line}"
    return "UTF-8"
