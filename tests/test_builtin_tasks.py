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


def test_every_builtin_task_is_covered():
    assert set(builtin_task_files()) >= set(EXPECTED)


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
