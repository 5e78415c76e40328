"""syllabus: student-centred reasoning distillation, as papermill notebooks over a small tested package.

Modules, one concern each: ``params`` (profiles), ``runs`` (run folders, manifests, atomic writes),
``cli`` (``syllabus run``); the stage issues add ``data``, ``lab``, ``verify``, ``sandbox``,
``models``, ``teachers``, ``train``, ``curate``, ``dmc``, ``select``, ``evaluate`` and ``plots``.
"""

__version__ = "0.1.0"
