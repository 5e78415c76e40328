import pandas as pd
import pytest

from syllabus.correlation import grid_datasets


def test_grid_datasets_selects_by_glob_and_names_unmatched_patterns():
    datasets = {name: pd.DataFrame({"problem_id": ["p1"]}) for name in
                ("all", "teacher=a", "teacher=a+unverified", "teacher=b", "level=1")}
    assert grid_datasets(datasets, None) is datasets
    assert sorted(grid_datasets(datasets, ["teacher=*"])) == ["teacher=a", "teacher=a+unverified", "teacher=b"]
    assert sorted(grid_datasets(datasets, ["teacher=?", "all"])) == ["all", "teacher=a", "teacher=b"]
    with pytest.raises(ValueError, match=r"\['style=\*'\] match no candidate dataset.*'level=1'"):
        grid_datasets(datasets, ["teacher=*", "style=*"])
