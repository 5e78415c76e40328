from pathlib import Path

import pytest

from syllabus.params import ParamsError, apply_overrides, available_profiles, load_profile, parse_override


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """\
name: mini
students: [{name: s, source: lab}]
teachers: [{name: t, backend: lab, style: prose}]
"""


def test_every_shipped_profile_validates():
    assert {"tiny", "ci", "smol", "paper"} <= set(available_profiles())
    for name in available_profiles():
        assert load_profile(name).name == name


def test_minimal_profile_gets_defaults(tmp_path):
    prof = load_profile(write(tmp_path, MINIMAL))
    assert prof.dmc.r0 == 1.0 and prof.dmc.lam == 1.0
    assert prof.curation.easy_pass_rate == 0.75
    assert prof.dynamic.ioa.tau_gap == 0.3 and prof.dynamic.ioa.tau_mastery == 0.9 and prof.dynamic.ioa.tau_zpd == 0.15
    assert prof.students[0].arch is not None


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "dmc: {lamda: 2}\n")
    with pytest.raises(ParamsError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "dmc.lamda" in str(err.value) and "unknown key" in str(err.value)


def test_wrong_type_and_out_of_range(tmp_path):
    with pytest.raises(ParamsError, match=r"key 'seed'"):
        load_profile(write(tmp_path, MINIMAL + "seed: many\n"))
    with pytest.raises(ParamsError, match=r"key 'correlation.sft_steps'.*greater than or equal to 1"):
        load_profile(write(tmp_path, MINIMAL + "correlation: {sft_steps: -5}\n"))


def test_malformed_yaml_gives_line(tmp_path):
    path = write(tmp_path, "name: x\nstudents: [oops\n")
    with pytest.raises(ParamsError, match=r"line \d+, column \d+: malformed YAML"):
        load_profile(path)


def test_empty_and_non_mapping(tmp_path):
    with pytest.raises(ParamsError, match="empty"):
        load_profile(write(tmp_path, ""))
    with pytest.raises(ParamsError, match="mapping"):
        load_profile(write(tmp_path, "- a\n- b\n"))


def test_unknown_profile_lists_available():
    with pytest.raises(ParamsError, match=r"unknown profile 'tny'.*tiny"):
        load_profile("tny")


def test_missing_data_dir(tmp_path):
    with pytest.raises(ParamsError, match=r"data.data_dir.*is not a directory"):
        load_profile(write(tmp_path, MINIMAL + "data: {data_dir: nowhere}\n"))


def test_teacher_backend_needs_its_field(tmp_path):
    text = "name: m\nstudents: [{name: s}]\nteachers: [{name: t, backend: file}]\n"
    with pytest.raises(ParamsError, match="needs 'path'"):
        load_profile(write(tmp_path, text))


def test_overrides_dotted_and_by_name(tmp_path):
    path = write(tmp_path, MINIMAL)
    prof = load_profile(path, dict([parse_override("dmc.lam=2.5"), parse_override("students.s.lora=true")]))
    assert prof.dmc.lam == 2.5 and prof.students[0].lora is True
    with pytest.raises(ParamsError, match="no list item 'zz'"):
        apply_overrides({"students": [{"name": "s"}]}, {"students.zz.lora": True})
    with pytest.raises(ParamsError, match="key=value"):
        parse_override("seed")


def test_resolved_dump_round_trips(tmp_path):
    import yaml

    prof = load_profile("tiny")
    again = write(tmp_path, yaml.safe_dump(prof.to_dict()), "resolved.yaml")
    assert load_profile(again).to_dict() == prof.to_dict()
