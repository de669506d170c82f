"""Recipes: one validated schema, YAML 1.2 scalars, --set overrides, errors that name file and field."""

from pathlib import Path

import pytest

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.services.io import write_yaml

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_use_the_embedded_model_and_demo_prompts():
    r = load_recipe()
    assert r.model.name == "smollm2"
    assert r.data.source == "builtin:demo"
    assert r.judge.backend == "rules"
    assert r.model.trust_remote_code is False


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    r = load_recipe(write(tmp_path, "sft:\n  learning_rate: 1e-5\ndpo:\n  beta: 5E-2\n"))
    assert r.sft.learning_rate == pytest.approx(1e-5)
    assert r.dpo.beta == pytest.approx(0.05)


def test_yaml_1_1_booleans_and_octals_stay_what_they_look_like(tmp_path):
    r = load_recipe(write(tmp_path, "name: no\ndata:\n  where:\n    split: off\n    code: 010\n"))
    assert r.name == "no"
    assert r.data.where == {"split": "off", "code": 10}


def test_yes_and_no_still_mean_true_and_false_in_boolean_fields(tmp_path):
    assert load_recipe(write(tmp_path, "sft:\n  lora: no\n")).sft.lora is False
    assert load_recipe(write(tmp_path, "sft:\n  lora: yes\n")).sft.lora is True


def test_a_boolean_field_rejects_other_words(tmp_path):
    with pytest.raises(DeliberateError, match=r"r\.yaml: sft\.lora: .*'maybe'"):
        load_recipe(write(tmp_path, "sft:\n  lora: maybe\n"))


def test_set_overrides_nest_and_read_values_as_yaml(tmp_path):
    path = write(tmp_path, "sft:\n  learning_rate: 1e-5\n")
    r = load_recipe(path, ["sft.learning_rate=3e-4", "data.where.split=heldout", "sft.lora=false",
                           "data.where.kind=[safe, borderline]"])
    assert r.sft.learning_rate == pytest.approx(3e-4)
    assert r.sft.lora is False
    assert r.data.where == {"split": "heldout", "kind": ["safe", "borderline"]}


def test_unknown_field_names_the_file_the_field_and_a_suggestion(tmp_path):
    with pytest.raises(DeliberateError) as e:
        load_recipe(write(tmp_path, "sft:\n  learnig_rate: 1e-5\n"))
    message = str(e.value)
    assert "r.yaml" in message and "sft.learnig_rate" in message and "did you mean 'learning_rate'" in message
    assert "\n" not in message


def test_wrong_type_names_the_field_and_the_value(tmp_path):
    with pytest.raises(DeliberateError, match=r"generation\.max_new_tokens: .*integer.*'lots'"):
        load_recipe(write(tmp_path, "generation:\n  max_new_tokens: lots\n"))


def test_out_of_range_value_is_rejected(tmp_path):
    with pytest.raises(DeliberateError, match=r"generation\.temperature: .*greater than or equal to 0"):
        load_recipe(None, ["generation.temperature=-1"])


def test_malformed_yaml_reports_file_line_and_column(tmp_path):
    with pytest.raises(DeliberateError, match=r"r\.yaml:2:\d+: malformed YAML"):
        load_recipe(write(tmp_path, "model:\n  name: a: b\n"))


def test_a_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(DeliberateError, match="a recipe is a mapping"):
        load_recipe(write(tmp_path, "- just\n- a list\n"))


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(DeliberateError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_set_without_equals_sign_is_rejected():
    with pytest.raises(DeliberateError, match="expected section.field=value"):
        load_recipe(None, ["sft.learning_rate"])


def test_saved_recipe_loads_back_identically(tmp_path):
    r = load_recipe(None, ["sft.learning_rate=1e-4", "data.where.split=train", "output_dir=out/x"])
    saved = write_yaml(tmp_path / "saved.yaml", r.model_dump(mode="json"))
    assert load_recipe(saved) == r


def test_every_field_is_documented_and_the_reference_page_is_current():
    from deliberate.config.reference import markdown, reference

    assert [f.path for f in reference() if not f.doc] == []
    page = ROOT / "docs" / "recipe.md"
    assert page.read_text() == markdown(), "regenerate: deliberate recipe fields --markdown > docs/recipe.md"


def test_one_item_of_a_list_is_reached_by_its_index():
    r = load_recipe(ROOT / "recipes" / "sacpo-cpu.yaml", ["dpo.stages[1].beta=[0.1,0.05]", "dpo.stages[-1].beta=0.2"])
    betas = {s.name: s.beta for s in r.dpo.stage_list()}
    assert betas["helpful-safe"] == [0.1, 0.05] and betas["safe"] == 0.2
    assert betas["helpful"] == 0.1  # the other items are untouched


def test_the_dpo_help_example_is_a_working_override():
    import re

    from deliberate.cli.stages import dpo

    example = re.search(r'--recipe (\S+) --set "([^"]+)"', dpo.__doc__)
    r = load_recipe(ROOT / example.group(1), [example.group(2)])
    assert [s.beta for s in r.dpo.stage_list() if s.name == "helpful-safe"] == [[0.1, 0.05]]


@pytest.mark.parametrize(("override", "message"), [
    ("dpo.stages[9].beta=1", r"dpo\.stages has 4 item\(s\), so \[9\] does not exist"),
    ("dpo.stages.beta=1", r"dpo\.stages is a list; give an index"),
    ("dpo.stages[1].betta=1", r"dpo\.stages\[1\] \(helpful-safe\): betta: unknown field \(did you mean 'beta'\?"),
    ("merge.merges=[{name: m, models: [a], wieghts: [1]}]", r"merge\.merges\[0\]\.wieghts: unknown field \(did you mean 'weights'\?"),
    ("eval.bench=[demo]", r"eval\.bench: unknown field \(did you mean 'benchmarks'\?"),
    ("model[0]=x", r"model is not a list"),
])
def test_a_wrong_override_is_one_line_that_says_what_to_write(override, message):
    with pytest.raises(DeliberateError, match=message) as e:
        load_recipe(ROOT / "recipes" / "sacpo-cpu.yaml", [override])
    assert "\n" not in str(e.value)


def test_mapping_keys_in_overrides_may_be_any_text():
    r = load_recipe(None, ["data.label_map.0=refuse", "data.category_map.Physical Harm=violence"])
    assert r.data.label_map == {"0": "refuse"} and r.data.category_map == {"Physical Harm": "violence"}


def test_one_value_where_a_list_is_expected_is_a_one_item_list():
    r = load_recipe(None, ["eval.models=stage:sft", "eval.benchmarks=xstest", "sft.lora_target_modules=q_proj"])
    assert (r.eval.models, r.eval.benchmarks) == (["stage:sft"], ["xstest"])
    assert r.sft.lora_target_modules == "q_proj"  # a field that takes one value or a list keeps the value


def test_an_override_that_is_not_valid_yaml_says_to_quote_it():
    with pytest.raises(DeliberateError, match=r"malformed YAML.*quote text that holds ': '") as e:
        load_recipe(None, ["generate.prefill=<think>\nCategory: {category}."])
    assert "generate.prefill" in str(e.value)
    quoted = load_recipe(None, ['generate.prefill="<think>\\nCategory: {category}."'])
    assert quoted.generate.prefill == "<think>\nCategory: {category}."


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)
