"""syllabus: student-centred reasoning distillation, as papermill notebooks over a small tested package.

Each stage notebook composes one stage module (``teacher_selection``, ``candidates``, ``compatibility``,
``correlation``, ``dynamic``, ``benchmark``) from the parts; the README's module map lists them all.
"""

__version__ = "0.1.0"
