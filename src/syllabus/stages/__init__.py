"""The six stages, one module per notebook, named after it; each composes the package's parts.

=====================  ==============================  ==================================================
notebook               stage module                    parts it composes
=====================  ==============================  ==================================================
01_teacher_selection   ``stages.teacher_selection``    generation, distillation, scoring, sft_cells, stats
02_trace_curation      ``stages.trace_curation``       curate, generation
03_dmc                 ``stages.dmc``                  dmc_factors, scoring, generation, distillation
04_correlation         ``stages.correlation``          stages.dmc, distillation, generation, sft_cells, stats
05_dynamic_selection   ``stages.dynamic_selection``    select, stages.dmc, train, distillation, generation, stats
06_benchmark           ``stages.benchmark``            evaluate (with eval_tasks, tasks/), students
=====================  ==============================  ==================================================

Every notebook loads its students with ``students.load_student``; stage 1 draws the problem splits
(``problems.problem_splits``) and later stages read them back (``Stage.splits``).
"""
