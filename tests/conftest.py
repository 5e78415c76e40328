"""Shared fixtures. Tests point the data directory at ../shared/data (the project's offline copy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT.parent / "shared" / "data").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SYLLABUS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SYLLABUS_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ.get("SYLLABUS_DATA_DIR", SHARED_DATA))
    if not (path / "gsm8k").is_dir():
        pytest.fail(f"benchmark data not found at {path}; set SYLLABUS_DATA_DIR to the folder holding gsm8k/ and math/")
    return path


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT
