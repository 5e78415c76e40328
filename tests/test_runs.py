import json
import os

import pandas as pd
import pytest
import torch

from syllabus import runs
from syllabus.runs import RunDir, RunError, atomic_path, normalise_stage, open_stage


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_normalise_stage():
    assert normalise_stage("3") == normalise_stage("03") == normalise_stage("dmc") == "03_dmc"
    with pytest.raises(RunError, match="unknown stage 'foo'.*01_teacher_selection"):
        normalise_stage("foo")


def test_stage_writes_tables_figures_manifest(tmp_path):
    stage = open_stage("03_dmc", "ci", run_dir=tmp_path / "run")
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    stage.save_table(df, "demo")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    stage.save_figure(fig, "line")
    manifest = stage.finish()
    folder = tmp_path / "run" / "03_dmc"
    assert (folder / "tables/demo.parquet").is_file() and (folder / "tables/demo.csv").is_file()
    assert (folder / "figures/line.png").is_file() and (folder / "figures/line.svg").is_file()
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["outputs"] == manifest["outputs"]
    for key in ("git", "packages", "params", "seed", "inputs", "outputs", "started", "finished"):
        assert key in on_disk
    assert on_disk["packages"]["torch"].startswith("2.")
    # numerics depend on the CPU's vector kernels: the manifest says which ran
    assert on_disk["cpu"]["torch_capability"] == str(torch.backends.cpu.get_cpu_capability()) and on_disk["cpu"]["model"]
    assert pd.read_parquet(folder / "tables/demo.parquet").equals(df)


def test_tables_and_figures_are_byte_identical_across_runs(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digests = []
    for i in range(2):
        stage = open_stage("01", "ci", run_dir=tmp_path / f"r{i}")
        stage.save_table(pd.DataFrame({"x": [0.1, 0.2]}), "t")
        fig, ax = plt.subplots()
        ax.bar(["a", "b"], [1, 2])
        stage.save_figure(fig, "f")
        digests.append(stage.finish()["outputs"])
    assert digests[0] == digests[1]


def test_input_from_unfinished_stage_is_a_clear_error(tmp_path):
    stage = open_stage("03_dmc", "ci", run_dir=tmp_path)
    with pytest.raises(RunError, match="stage 02_trace_curation has not finished"):
        stage.read_table("02", "datasets")


def test_input_from_a_stage_with_a_damaged_manifest_is_a_clear_error(tmp_path):
    first = open_stage("01", "ci", run_dir=tmp_path)
    first.save_table(pd.DataFrame({"x": [1]}), "problems")
    first.finish()
    (tmp_path / "01_teacher_selection" / "manifest.json").write_text('{"stage": ')
    assert not first.run.is_complete("01")
    with pytest.raises(RunError, match=r"stage 01_teacher_selection has not finished in .* \(its damaged "
                                       r"manifest\.json: not valid JSON: .*\); run it again: syllabus run --run-dir "
                                       r".* --stages 01"):
        open_stage("02", "ci", run_dir=tmp_path).read_table("01", "problems")
    with pytest.raises(RunError, match=r"x\.json is damaged \(not UTF-8: byte 0xff at byte offset 2, line 1\); "
                                       "delete it and re-run the stage that wrote it"):
        (tmp_path / "x.json").write_bytes(b'"a\xff"')
        runs.read_json(tmp_path / "x.json")


def test_a_stage_reads_only_its_declared_inputs(tmp_path):
    """Stage keys cover the outputs of the stage table's inputs only, so reading anything else must fail loudly."""
    from syllabus.runs import STAGE_SECTIONS, STAGE_TABLE, STAGES

    for stage, spec in STAGE_TABLE.items():
        assert spec.name == stage and all(STAGES.index(s) < STAGES.index(stage) for s in spec.inputs), stage
        assert set(spec.sections) <= set(STAGE_SECTIONS), stage
    stage = open_stage("05_dynamic_selection", "ci", run_dir=tmp_path)
    with pytest.raises(RunError, match=r"from stage 04_correlation, which is not among its inputs.*STAGE_TABLE"):
        stage.read_table("04", "grid")


def test_a_stage_reads_only_its_declared_profile_sections(tmp_path):
    """A section outside the stage's row is not in its cache key, so reading it must fail loudly."""
    import pickle

    stage = open_stage("06_benchmark", "ci", run_dir=tmp_path)
    assert stage.params.benchmark.limit == 10 and stage.params.training.batch_size == 8  # its own and shared ones
    with pytest.raises(RunError, match=r"stage 06_benchmark reads profile section 'dmc'.*STAGE_TABLE"):
        stage.params.dmc
    again = pickle.loads(pickle.dumps(stage.params))  # stage-4 worker jobs carry it
    assert again.seed == stage.params.seed
    with pytest.raises(RunError, match="section 'dmc'"):
        again.dmc
    assert open_stage("01", "ci", run_dir=tmp_path).params.dmc.score_batch_size >= 1  # stage 1 scores traces


def test_stage_keys_cover_exactly_the_sections_of_the_stage_table():
    from syllabus.params import load_profile
    from syllabus.runs import STAGE_SECTIONS, STAGE_TABLE, stage_params

    params = load_profile("ci").to_dict()
    for stage, spec in STAGE_TABLE.items():
        keyed = set(stage_params(params, stage))
        assert keyed & set(STAGE_SECTIONS) == set(spec.sections), stage
        assert set(params) - keyed - set(STAGE_SECTIONS) == {"description"}, stage


def test_every_profile_field_is_read_somewhere():
    """No setting is silently ignored: each field of ``Profile`` is read (``.field`` or ``["field"]``) by the
    package outside ``params.py`` or by a notebook."""
    import json
    import re
    import typing

    from pydantic import BaseModel

    from syllabus.params import PROJECT_ROOT, Profile

    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for arg in typing.get_args(annotation):
            yield from models_in(arg)

    def fields(model, prefix=""):
        for name, field in model.model_fields.items():
            for sub in models_in(field.annotation):
                yield from fields(sub, f"{prefix}{name}.")
            yield f"{prefix}{name}", name

    code = [p.read_text() for p in (PROJECT_ROOT / "src" / "syllabus").rglob("*.py") if p.name != "params.py"]  # stages/ too
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")):
        code += ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    text = "\n".join(code)
    unread = [path for path, name in fields(Profile) if not re.search(rf"\.{name}\b|[\"']{name}[\"']", text)]
    assert not unread, f"profile fields nothing reads: {unread}; wire them into the stage that needs them or remove them"


def test_run_folder_of_other_profile_is_refused(tmp_path):
    open_stage("01", "ci", run_dir=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RunError, match="belongs to profile 'ci'"):
        open_stage("01", "tiny", run_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unwritable_run_folder(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/syllabus-run"  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run"
    with pytest.raises(RunError, match="is not writable"):
        RunDir(target).check_writable()


def test_seed_is_stable():
    assert runs.stable_seed(7, "03_dmc", bits=32, form="colon") == 4000186321 != runs.stable_seed(8, "03_dmc", bits=32, form="colon")


def test_atomic_writes_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os

    from syllabus.models import atomic_dir
    from syllabus.runs import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.csv", "a\n")
        with atomic_dir(tmp_path / "model") as folder:
            (folder / "weights.bin").write_bytes(b"0")
    finally:
        os.umask(old)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_a_staged_stage_replaces_the_stage_folder_only_when_finished(tmp_path, monkeypatch):
    first = open_stage("01", "ci", run_dir=tmp_path)
    first.save_table(pd.DataFrame({"x": [1]}), "t")
    first.save_json({"cache": "kept"}, "inner_cache.json")
    first.finish()
    run = first.run
    old = {p.name: p.read_bytes() for p in (tmp_path / "01_teacher_selection").rglob("*") if p.is_file()}
    staging = run.begin_staging("01")
    assert (staging / "inner_cache.json").is_file() and not (staging / "manifest.json").exists()
    monkeypatch.setenv(runs.STAGING_ENV, str(staging))
    again = open_stage("01", run.params_file, run_dir=tmp_path)  # as the notebook's kernel under syllabus run
    assert again.dir == staging
    again.save_table(pd.DataFrame({"x": [2]}), "t")
    with pytest.raises(RunError, match="has not finished"):
        run.commit_staging("01")
    assert {p.name: p.read_bytes() for p in (tmp_path / "01_teacher_selection").rglob("*") if p.is_file()} == old
    again.finish()
    run.commit_staging("01")
    assert pd.read_parquet(tmp_path / "01_teacher_selection" / "tables" / "t.parquet")["x"].tolist() == [2]
    assert not staging.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_swap_cut_short_between_its_two_renames_is_completed_by_the_next_run(tmp_path):
    stage = open_stage("01", "ci", run_dir=tmp_path)
    stage.finish()
    run = stage.run
    staging = run.begin_staging("01")
    runs.Stage("01", stage.params, run, staging).finish()
    os.replace(run.stage_dir("01"), tmp_path / ".01_teacher_selection.replaced.tmp")  # killed right here
    run.prepare(stage.params)
    assert run.is_complete("01") and not staging.exists()
    assert not (tmp_path / ".01_teacher_selection.replaced.tmp").exists()


def test_exclusive_makes_a_second_holder_wait_until_the_first_lets_go(tmp_path):
    import threading

    lock = tmp_path / "sub" / "phase0-abc.lock"
    release, entered = threading.Event(), []

    def first():
        with runs.exclusive(lock):
            entered.append("first")
            release.wait(10)
        entered.append("first out")

    def second():
        with runs.exclusive(lock):  # its own open file: flock makes it wait for the first
            entered.append("second")

    a = threading.Thread(target=first)
    a.start()
    while not entered:
        pass
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert entered == ["first"] and b.is_alive()  # still waiting
    release.set()
    a.join(10)
    b.join(10)
    assert sorted(entered) == ["first", "first out", "second"] and not b.is_alive()  # in once the first let go
