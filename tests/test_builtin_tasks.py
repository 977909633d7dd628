"""Content checks for the built-in task files (src/igmu/tasks/builtin/*.yaml)."""

from __future__ import annotations

import re

import pytest

from igmu.tasks import load_task
from igmu.tasks.loader import builtin_task_files
from igmu.tasks.stripping import concept_words_in

EXPECTED = {
    # name: (node, kind, igmu key, forget classes)
    "nudity": ("nsfw.attribute", "attribute", "nudity", ["woman", "man", "person"]),
    "van_gogh": (
        "style.attribute",
        "attribute",
        "style_vangogh",
        ["landscape", "still_life", "cityscape", "portrait"],
    ),
    "church": ("object.entity", "entity", "object_church", ["church"]),
    "parachute": ("object.entity", "entity", "object_parachute", ["parachute"]),
}

# Class order of the unrelated set must match the official IGMU folder layout.
UNRELATED_ORDER = {
    "church": ["parachute", "cat", "airplane", "motorcycle", "bird", "chair"],
    "parachute": ["church", "cat", "airplane", "motorcycle", "bird", "chair"],
}

MIN_FORGET_PER_CLASS = 50
MIN_LANGUAGES = 4
MIN_MULTILINGUAL_PER_LANGUAGE = 12
MIN_PARAPHRASE_PER_CLASS = 15
MIN_RELATED_CLASSES = 4
MIN_RELATED_PER_CLASS = 12
MIN_UNRELATED_PER_CLASS = 20

MINOR_WORDS = re.compile(
    r"\b(?:girls?|boys?|child|children|kids?|teens?|teenage|teenagers?|minors?|schoolgirls?"
    r"|schoolboys?|young|youth|baby|babies|infants?|toddlers?)\b",
    re.IGNORECASE,
)

TASKS = sorted(EXPECTED)


@pytest.fixture(scope="module", params=TASKS)
def task(request):
    return load_task(request.param)


# MiniWorld tasks: generated from the world's captions (tested in test_miniworld_world.py and
# below for their unlearning prompts); here their place in CatIGMU and their world.
MINI_EXPECTED = {
    "mini_object": ("object.entity", "entity", ["cross"]),
    "mini_style": ("style.attribute", "attribute", ["stripes"]),
    "mini_attribute": ("object.attribute", "attribute", ["spot"]),
}


def test_every_builtin_task_has_expectations():
    """A new built-in task must be added to EXPECTED or MINI_EXPECTED to be checked at all."""
    assert set(builtin_task_files()) == set(EXPECTED) | set(MINI_EXPECTED)


@pytest.mark.parametrize("name", sorted(MINI_EXPECTED))
def test_mini_task_place_and_world(name):
    task = load_task(name)
    node, kind, classes = MINI_EXPECTED[name]
    assert (task.node, task.kind, task.world) == (node, kind, "miniworld")
    assert task.prompt_set("forget").class_names() == classes
    assert not task.is_sensitive


def test_node_kind_and_key(task):
    node, kind, key, _ = EXPECTED[task.name]
    assert task.node == node
    assert task.kind == kind
    assert task.igmu_key == key


def test_forget_classes_and_size(task):
    forget = task.prompt_set("forget")
    assert forget.class_names() == EXPECTED[task.name][3]
    for class_name, prompts in forget.classes:
        assert len(prompts) >= MIN_FORGET_PER_CLASS, class_name
        assert len(set(prompts)) == len(prompts), class_name


def test_every_forget_prompt_names_the_concept(task):
    for prompt in task.prompt_set("forget").prompts():
        assert concept_words_in(prompt.text, task.concept_words), prompt


def test_stripped_prompts_lose_the_concept(task):
    forget = task.prompt_set("forget")
    stripped = task.prompt_set("stripped")
    assert stripped.class_names() == forget.class_names()
    for original, bare in zip(forget.prompts(), stripped.prompts(), strict=True):
        assert bare.text != original.text, original.text
        assert bare.text.strip(), original.text
        assert concept_words_in(bare.text, task.concept_words) == [], (original.text, bare.text)


def test_multilingual(task):
    multilingual = task.prompt_set("multilingual")
    assert len(multilingual.classes) >= MIN_LANGUAGES
    for language, prompts in multilingual.classes:
        assert len(prompts) >= MIN_MULTILINGUAL_PER_LANGUAGE, language


def test_paraphrase_avoids_concept_words(task):
    paraphrase = task.prompt_set("paraphrase")
    assert paraphrase.class_names() == EXPECTED[task.name][3]
    for class_name, prompts in paraphrase.classes:
        assert len(prompts) >= MIN_PARAPHRASE_PER_CLASS, class_name
    for prompt in paraphrase.prompts():
        assert concept_words_in(prompt.text, task.concept_words) == [], prompt.text


def test_related_avoids_concept_words(task):
    related = task.prompt_set("related")
    assert len(related.classes) >= MIN_RELATED_CLASSES
    for class_name, prompts in related.classes:
        assert len(prompts) >= MIN_RELATED_PER_CLASS, class_name
    for prompt in related.prompts():
        assert concept_words_in(prompt.text, task.concept_words) == [], prompt.text


@pytest.mark.parametrize("name", sorted(UNRELATED_ORDER))
def test_unrelated_order_and_content(name):
    task = load_task(name)
    unrelated = task.prompt_set("unrelated")
    assert unrelated.class_names() == UNRELATED_ORDER[name]
    for class_name, prompts in unrelated.classes:
        assert len(prompts) >= MIN_UNRELATED_PER_CLASS, class_name
    for prompt in unrelated.prompts():
        assert concept_words_in(prompt.text, task.concept_words) == [], prompt.text


def test_nudity_prompts_never_mention_minors():
    task = load_task("nudity")
    assert task.is_sensitive
    texts = [p.text for prompt_set in task.prompt_sets.values() for p in prompt_set.prompts()]
    assert texts
    offending = [t for t in texts if MINOR_WORDS.search(t)]
    assert offending == []


def test_minor_word_pattern_is_whole_word():
    assert MINOR_WORDS.search("a Young woman")
    assert MINOR_WORDS.search("a kid, outdoors")
    assert not MINOR_WORDS.search("a woman in kidskin gloves")


@pytest.mark.parametrize("name", ["mini_object", "mini_style", "mini_attribute"])
def test_mini_unlearning_prompts_are_paired_and_never_evaluated(name):
    from igmu.miniworld.oracle import parse_caption

    task = load_task(name)
    assert task.unlearning is not None and len(task.unlearning.erase) == 120
    # (stripped prompts are ORG's reference inputs, not scored prompts of the erased model)
    evaluated = {
        p.text for name, s in task.prompt_sets.items() if name != "stripped" for p in s.prompts()
    }
    assert not {p for p, _ in task.unlearning.erase} & evaluated
    assert not set(task.unlearning.preserve) & evaluated
    field = {"mini_object": "shape", "mini_style": "style", "mini_attribute": "attribute"}[name]
    for prompt, anchor in task.unlearning.erase:
        asked, without = parse_caption(prompt), parse_caption(anchor)
        # the anchor is the same caption with only the concept's factor changed
        assert asked[field] != without[field]
        assert {k: v for k, v in asked.items() if k != field} == {
            k: v for k, v in without.items() if k != field
        }


def _with_unlearning(section: str) -> str:
    from importlib import resources

    text = resources.files("igmu.tasks").joinpath("builtin", "church.yaml").read_text("utf-8")
    return text + "\nunlearning:\n" + section


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  erase:\n  - prompt: a red church\n", "exactly 'prompt' and 'anchor'"),
        ("  erase:\n  - {prompt: a church, anchor: a church}\n", "must differ"),
        ("  erase: []\n", "non-empty list"),
        ("  erase:\n  - {prompt: a red church, anchor: a red barn}\n  presrve: [a cat]\n",
         "Did you mean 'preserve'"),
    ],
)
def test_bad_unlearning_section_names_the_field(section, message):
    from igmu.core.errors import ConfigError
    from igmu.tasks.loader import parse_task

    with pytest.raises(ConfigError, match=message) as error:
        parse_task(_with_unlearning(section), "church-edit.yaml")
    assert "church-edit.yaml" in str(error.value)


def test_unlearning_prompts_must_not_be_evaluated_prompts():
    from igmu.core.errors import ConfigError
    from igmu.tasks.loader import parse_task

    church = load_task("church")
    evaluated = church.prompt_set("forget").prompts()[0].text
    section = f"  erase:\n  - {{prompt: '{evaluated}', anchor: a barn}}\n"
    with pytest.raises(ConfigError, match="repeats the evaluated prompt"):
        parse_task(_with_unlearning(section), "church-edit.yaml")


def test_default_metrics_are_declared_once_and_nodes_add_to_them():
    """The root's metrics reach every task; ``extra_metrics`` appends (person_rate where a
    person must survive, ground-truth metrics on the MiniWorld); ``metrics`` replaces."""
    from igmu.core.errors import ConfigError
    from igmu.taxonomy.tree import load_taxonomy, merge_guidance, validate_guidance

    taxonomy = load_taxonomy()
    defaults = taxonomy.root.guidance["metrics"]
    assert all("metrics" not in node.guidance for node in taxonomy.leaves())
    assert load_task("church").guidance["metrics"] == defaults
    assert load_task("nudity").guidance["metrics"] == [*defaults, "person_rate"]
    assert load_task("mini_object").guidance["metrics"] == [*defaults, "prompt_accuracy",
                                                            "fid_world"]
    replaced = merge_guidance({"metrics": defaults}, {"metrics": ["fid"], "extra_metrics":
                                                     ["lpips", "fid"]})
    assert replaced == {"metrics": ["fid", "lpips"]}
    with pytest.raises(ConfigError, match="'extra_metrics' must list names"):
        validate_guidance({"extra_metrics": [1]}, "task.yaml")
