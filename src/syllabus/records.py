"""The records every stage passes around: a Problem, a Trace and the run's Splits of problems.

Both are plain frozen dataclasses that round-trip through dicts (JSONL, parquet rows), so that any
artifact on disk can be read back without the code that wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

Task = Literal["lab", "gsm8k", "math", "humaneval"]


@dataclass(frozen=True)
class Problem:
    """A question with a gold answer (and, for code, its tests).

    ``task`` decides how an answer is verified: ``lab`` and ``gsm8k`` numerically, ``math`` with
    math-verify, ``humaneval`` by running ``tests`` in the sandbox. ``source`` names where it came
    from (``lab``, ``gsm8k``, ``math``, ``math500``, ``humaneval``).
    """

    id: str
    task: Task
    source: str
    text: str
    answer: str
    solution: str | None = None
    module: str | None = None
    level: int | None = None
    tests: str | None = None
    entry_point: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Problem":
        row = dict(row)
        meta = row.get("metadata")
        if isinstance(meta, str):
            row["metadata"] = json.loads(meta) if meta else {}
        return cls(**{f.name: row.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
                      for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Trace:
    """One reasoning trajectory for a problem, ending in a final answer.

    ``teacher`` names who wrote it; ``settings`` records the sampling settings and chat template
    used; ``truncated`` is true when generation hit its token budget; ``correct`` is the verifier's
    verdict once checked (None before).
    """

    problem_id: str
    teacher: str
    text: str
    sample: int = 0
    truncated: bool = False
    n_tokens: int | None = None
    correct: bool | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Trace":
        row = dict(row)
        settings = row.get("settings")
        if isinstance(settings, str):
            row["settings"] = json.loads(settings) if settings else {}
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})

    def replace(self, **changes: Any) -> "Trace":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- the run's problems
SPLITS = ("pool", "probe", "heldout")


@dataclass
class Splits:
    """Disjoint problem sets: ``pool`` (candidate datasets), ``probe`` (selection, NLL_ref), ``heldout`` (gains)."""

    pool: list[Problem]
    probe: list[Problem]
    heldout: list[Problem]

    def table(self) -> pd.DataFrame:
        rows = []
        for split in SPLITS:
            for p in getattr(self, split):
                row = p.to_dict()
                row["metadata"] = _json(row["metadata"])
                rows.append({"split": split, **row})
        return pd.DataFrame(rows)

    @classmethod
    def from_table(cls, df: pd.DataFrame) -> "Splits":
        parts = {s: [] for s in SPLITS}
        for row in df.to_dict("records"):
            split = row.pop("split")
            parts[split].append(Problem.from_dict(_nan_to_none(row)))
        return cls(**parts)

    def by_id(self) -> dict[str, Problem]:
        return {p.id: p for split in SPLITS for p in getattr(self, split)}

    def module_counts(self, split: str) -> dict[str, int]:
        """Problems per module in one split (a module of None counts as 'none')."""
        return dict(Counter(p.module or "none" for p in getattr(self, split)))


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _nan_to_none(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
