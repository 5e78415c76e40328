"""syllabus: student-centred reasoning distillation, as papermill notebooks over a small tested package.

Each stage notebook composes one stage module of ``syllabus.stages``, named after it (``teacher_selection``,
``trace_curation``, ``dmc``, ``correlation``, ``dynamic_selection``, ``benchmark``), from the parts beside
``stages/`` (``problems``, ``students``, ``generation``, ``distillation``, ``dmc_factors``, ``select``, ...);
the README's module map lists them all.
"""

__version__ = "0.1.0"
