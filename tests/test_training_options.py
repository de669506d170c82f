"""Recipe fields reach TRL once: every training field is passed to TRL's config or read by deliberate itself.

A training section's field is passed to the TRL config its stage builds when the config has a field of that name
(or of the name in `TRL_NAMES`); the fields deliberate reads itself are listed in `OWN_FIELDS`. An option that
is neither does nothing, so these tests fail on one; and every passed field is checked to arrive with its value.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import trl

from deliberate.config import DPOStage, RLOptions, RMOptions, SFTOptions, load_recipe
from deliberate.services.training import trl_config

PACKAGE = Path(__file__).resolve().parents[1] / "deliberate"
TRL_CONFIGS = {SFTOptions: ["SFTConfig"], DPOStage: ["DPOConfig", "KTOConfig"], RLOptions: ["GRPOConfig", "RLOOConfig"],
               RMOptions: ["RewardConfig"]}


def accepted(config_names: list[str]) -> set[str]:
    return {f.name for name in config_names for f in dataclasses.fields(getattr(trl, name))}


def attributes_read() -> set[str]:
    """Every `x.name` attribute read anywhere in the package (a field's declaration is not an attribute read)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("section", list(TRL_CONFIGS), ids=lambda s: s.__name__)
def test_every_training_field_is_passed_to_trl_or_read_by_deliberate(section):
    targets = accepted(TRL_CONFIGS[section])
    read = attributes_read()
    nowhere = []
    for name in section.model_fields:
        if name in section.OWN_FIELDS:
            if name not in read:
                nowhere.append(f"{name} (in OWN_FIELDS, but no code reads it)")
        elif section.TRL_NAMES.get(name, name) not in targets:
            nowhere.append(f"{name} (not a field of {' or '.join(TRL_CONFIGS[section])})")
    assert nowhere == []
    assert set(section.OWN_FIELDS) <= set(section.model_fields)  # no stale entries
    assert set(section.TRL_NAMES) <= set(section.model_fields) and set(section.TRL_NAMES.values()) <= targets


def _other_value(section, name: str):
    """A valid value for the field that differs from its default."""
    default = section.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3 if default > 0 else 7
    if isinstance(default, float):
        return 0.25 if default == 0 else default / 2
    if name == "loss_type":
        return ["ipo"] if section is DPOStage else "dapo"
    if name == "report_to":
        return ["tensorboard"]
    if name == "run_name":
        return "a-run"
    if name.endswith("lr_scheduler_type"):
        return "cosine" if default != "cosine" else "linear"
    raise AssertionError(f"no test value for {section.__name__}.{name} ({default!r})")


CASES = [(SFTOptions, "SFTConfig", {}), (DPOStage, "DPOConfig", {}), (DPOStage, "KTOConfig", {"loss_type": "kto"}),
         (RLOptions, "GRPOConfig", {"num_generations": 2, "per_device_train_batch_size": 2}),
         (RLOptions, "RLOOConfig", {"num_generations": 2, "per_device_train_batch_size": 2}),
         (RMOptions, "RewardConfig", {})]


@pytest.mark.parametrize(("section", "config", "computed"), CASES, ids=[c[1] for c in CASES])
def test_every_passed_field_arrives_in_trls_config_with_its_value(section, config, computed, tmp_path):
    config_class = getattr(trl, config)
    fields = {f.name for f in dataclasses.fields(config_class)}
    passed = {n: section.TRL_NAMES.get(n, n) for n in section.model_fields
              if n not in section.OWN_FIELDS and section.TRL_NAMES.get(n, n) in fields and n not in computed}
    values = {n: _other_value(section, n) for n in passed}
    extra = {"name": "x"} if section is DPOStage else {}
    options = section(**extra, **values)
    args = trl_config(config_class, load_recipe(None), options, tmp_path, **computed)
    arrived = {n: getattr(args, target) for n, target in passed.items()}
    assert arrived == values
    assert args.disable_tqdm  # our own progress display
    assert trl_config(config_class, load_recipe(None), section(**extra), tmp_path, **computed).report_to == []


def test_the_dpo_warmup_ratio_reaches_trl_as_a_fraction_of_the_steps(tmp_path):
    args = trl_config(trl.DPOConfig, load_recipe(None), DPOStage(name="x", warmup_ratio=0.1), tmp_path)
    assert args.warmup_steps == 0.1  # transformers 5 reads a float below 1 as a ratio of the total steps


def test_a_section_overrides_the_defaults_of_shared_fields_without_redeclaring_them():
    assert (SFTOptions().learning_rate, DPOStage(name="x").learning_rate, RLOptions().learning_rate) == (2e-5, 5e-7, 1e-6)
    docs = {cls.model_fields["learning_rate"].description for cls in (SFTOptions, DPOStage, RLOptions)}
    assert len(docs) == 1  # one declaration, one docstring


def test_every_recipe_field_is_read_by_deliberate_or_passed_to_trl():
    from deliberate.config.reference import reference

    read = attributes_read()
    training = {name: section for name, section in (("sft", SFTOptions), ("dpo", DPOStage), ("rl", RLOptions),
                                                    ("rm", RMOptions))}
    unused = []
    for field in reference():
        top, _, rest = field.path.partition(".")
        leaf = field.path.rsplit(".", 1)[-1].removesuffix("[]")
        if leaf in read:
            continue
        section = training.get(top)
        if section is not None and "." not in rest and rest in section.model_fields \
                and section.TRL_NAMES.get(rest, rest) in accepted(TRL_CONFIGS[section]):
            continue
        unused.append(field.path)
    assert unused == []
