"""Shared fixtures. Every test sees a bare clone: no ``$SYLLABUS_DATA_DIR`` and no ``../shared/data``.

Tests that need benchmark rows use ``data_dir``: the small subsets committed under
``tests/fixtures/data`` (same layout as a full data folder). The full-data checks use
``full_data_dir``: a full folder found at ``$SYLLABUS_DATA_DIR`` or ``../shared/data`` when the
session starts, else they are skipped with the reason (CI has the data and runs them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syllabus import params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = PROJECT_ROOT / "tests" / "fixtures" / "data"
GSM8K_TEST_ROWS = 1319  # a folder whose gsm8k/test.jsonl has every row is a full one

# The tests read local data only (fixtures or a full copy); where a test needs the hub it stands in for it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _find_full_data() -> tuple[Path | None, str]:
    """(folder, why not) for the full benchmark data: ``$SYLLABUS_DATA_DIR``, then ``../shared/data``."""
    env = os.environ.get(params.DATA_DIR_ENV)
    places = ([Path(env).expanduser().resolve()] if env else []) + [params.SHARED_DATA_DIR]
    for place in places:
        test_file = place / "gsm8k" / "test.jsonl"
        if test_file.is_file() and sum(1 for line in test_file.open() if line.strip()) == GSM8K_TEST_ROWS:
            return place, ""
    where = " or ".join(str(p) for p in places)
    return None, (f"full benchmark data not found (looked for gsm8k/test.jsonl with {GSM8K_TEST_ROWS} rows in "
                  f"{where}); set {params.DATA_DIR_ENV} or put the data at {params.SHARED_DATA_DIR} to run it")


FULL_DATA, NO_FULL_DATA_REASON = _find_full_data()


@pytest.fixture(autouse=True)
def bare_clone(monkeypatch, tmp_path_factory):
    """No data folder beside the project and no ``$SYLLABUS_DATA_DIR``, whatever this machine has."""
    monkeypatch.delenv(params.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(params, "SHARED_DATA_DIR", tmp_path_factory.getbasetemp() / "no-shared-data")


@pytest.fixture
def data_dir() -> Path:
    """The committed fixture subsets (tests/fixtures/data/README.md)."""
    return FIXTURE_DATA


@pytest.fixture
def full_data_dir() -> Path:
    """The full benchmark data, or skip the test with the reason."""
    if FULL_DATA is None:
        pytest.skip(NO_FULL_DATA_REASON)
    return FULL_DATA


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT
