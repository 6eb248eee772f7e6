import pytest

from recemb.config import build_config, load_config, parse_overrides
from recemb.errors import ConfigError


def test_defaults_and_nested_override():
    cfg = build_config({"data": {"synth": {"users": 10}}}, ["data.synth.items=7", "eval.k=[5, 50]"])
    assert cfg.data.synth.users == 10
    assert cfg.data.synth.items == 7
    assert cfg.eval.k == [5, 50]
    assert cfg.prepared_dir.as_posix() == "runs/quickstart/data"


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  sytnh:\n    users: 3\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*unknown key 'data\.sytnh'"):
        load_config(path)


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'eval.kk'"):
        build_config({}, ["eval.kk=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"data\.synth\.users.*'many'"):
        build_config({}, ["data.synth.users=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["eval.k"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        build_config({"eval": {"seed": 1}}, ["eval.seed.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("name", ["quickstart", "ml-100k", "yoochoose", "mind"])
def test_shipped_configs_load(name):
    from recemb.data.paths import REPO_ROOT

    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert cfg.run.name == name


def test_eval_models_are_names_checked_later_but_never_empty():
    # eval.models is a list of registry names (checked where scorers are built);
    # the section itself only rejects an empty name.
    names = ["item2vec", "two_tower-text"]
    assert build_config({"eval": {"models": names}}).eval.models == names
    with pytest.raises(ConfigError, match="empty name"):
        build_config({"eval": {"models": ["item2vec", " "]}})


def test_every_section_is_a_frozen_strict_section():
    from recemb.config import PipelineConfig
    from recemb.section import Section

    sections = {name: f.annotation for name, f in PipelineConfig.model_fields.items() if name != "stages"}
    assert len(sections) == 13
    for name, annotation in sections.items():
        assert issubclass(annotation, Section), name
