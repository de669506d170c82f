"""The policy spec: the paper's categories, spec_for(category), lookups by alias, validation."""

import pytest

from deliberate.errors import DeliberateError
from deliberate.services.spec import load_spec

PAPER_CATEGORIES = {"erotic_content", "extremism", "harassment", "illicit_behavior", "regulated_advice",
                    "self_harm", "violence", "safe"}


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def test_default_spec_has_the_papers_categories_and_three_styles(spec):
    assert set(spec.category_ids) == PAPER_CATEGORIES
    assert set(spec.styles) == {"comply", "refuse", "safe_complete"}
    assert spec.category("self_harm").style == "safe_complete"
    assert spec.category("violence").style == "refuse"
    assert spec.category("safe").style == "comply"


def test_spec_for_has_the_overview_every_category_summary_and_only_one_granular_policy(spec):
    text = spec.spec_for("violence")
    assert spec.overview.split(".")[0] in text
    for c in spec.categories:
        assert f"- {c.id} ({c.title}): {c.definition}" in text  # the summary of every category
    for guideline in spec.styles["refuse"].guidelines:
        assert guideline in text
    for rule in spec.category("violence").disallowed + spec.category("violence").allowed:
        assert rule in text
    for other in spec.categories:
        if other.id != "violence":
            for rule in other.disallowed + other.allowed:
                assert rule not in text, f"{other.id}'s granular policy leaked into spec_for('violence')"


def test_categories_are_found_by_title_alias_and_spelling(spec):
    assert spec.category("Illicit behaviour").id == "illicit_behavior"
    assert spec.category("ILLICIT-BEHAVIOR").id == "illicit_behavior"
    assert spec.category("suicide").id == "self_harm"
    assert spec.category("Violent crimes").id == "violence"


def test_unknown_category_lists_the_known_ones_and_the_closest(spec):
    with pytest.raises(DeliberateError, match="unknown category 'gardening'.*known: erotic_content"):
        spec.spec_for("gardening")
    with pytest.raises(DeliberateError, match="did you mean 'violence'"):
        spec.spec_for("violnce")


def test_a_category_using_an_undefined_style_is_rejected(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\noverview: o\nstyles:\n  comply: {description: d}\n"
        "categories:\n  - {id: weapons, title: Weapons, definition: d, style: refuse}\n"
    )
    with pytest.raises(DeliberateError, match=r"s\.yaml: .*styles not defined under 'styles': \['refuse'\]"):
        load_spec(path)


def test_an_alias_claimed_by_two_categories_is_rejected(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: t\noverview: o\nstyles:\n  refuse: {description: d}\ncategories:\n"
        "  - {id: a, title: A, definition: d, style: refuse, aliases: [shared]}\n"
        "  - {id: b, title: B, definition: d, style: refuse, aliases: [Shared]}\n"
    )
    with pytest.raises(DeliberateError, match="'Shared' is used by both 'a' and 'b'"):
        load_spec(path)


def test_a_spec_with_a_typo_names_the_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\noverveiw: o\nstyles: {}\ncategories: []\n")
    with pytest.raises(DeliberateError, match=r"overveiw: unknown field \(did you mean 'overview'"):
        load_spec(path)
