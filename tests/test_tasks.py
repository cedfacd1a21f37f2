"""The offline task builders (spd_ref/tasks): determinism, sizes, held-out text, lm-eval wiring."""
from __future__ import annotations

import collections
import re

import pytest

from spd_ref.calibration.data import article_split
from spd_ref.evaluation.tasks import OFFLINE_TASKS, TASKS_DIR, shipped, wiki

BUILDERS = {  # task -> (builder, default size)
    "spd_analogy": (shipped.analogy_items, 400),
    "spd_polarity": (shipped.polarity_items, 200),
    "spd_lambada": (wiki.lambada_items, 250),
    "spd_hellaswag": (wiki.hellaswag_items, 400),
    "spd_wikippl": (wiki.wikippl_items, 40),
}


@pytest.fixture(scope="module")
def split():
    calibration, heldout = article_split()
    return calibration, heldout


def texts_of(item: dict) -> list[str]:
    """The Wikipedia text an item shows the model (its passage, context, true ending, document)."""
    if "text" in item:
        return [item["text"]]
    if "target" in item:
        return [item["context"] + item["target"]]
    return [item["query"], item["choices"][item["label"]]]


@pytest.mark.parametrize("task", OFFLINE_TASKS)
def test_builder_is_deterministic_and_sized(task):
    build, size = BUILDERS[task]
    items = build()
    assert len(items) == size
    rebuilt = build.__wrapped__()  # bypass the cache: a second build from scratch
    assert list(rebuilt) == list(items)
    # A smaller size is a prefix of the default one, so --limit and n_items agree.
    assert list(build.__wrapped__(25)) == list(items[:25])


@pytest.mark.parametrize("task", ["spd_lambada", "spd_hellaswag", "spd_wikippl"])
def test_wikipedia_tasks_are_held_out(task, split):
    calibration, heldout = split
    calibration_titles = {t for t, _ in calibration}
    heldout_text = dict(heldout)
    items = BUILDERS[task][0]()
    for item in items:
        assert item["title"] not in calibration_titles
        assert item["title"] in heldout_text
        for text in texts_of(item):
            assert text in heldout_text[item["title"]]  # really from that held-out article
            for line in text.split("\n"):
                if len(line.split()) >= 8:  # headings like "See also" recur in every article
                    assert not any(line in cal for _, cal in calibration), f"{task}: {line[:80]!r}"
    # Interleaved over articles: the first items already span many held-out articles.
    assert len({item["title"] for item in items[:20]}) >= 10


def test_shipped_tasks_do_not_come_from_wikipedia(split):
    calibration, _ = split
    corpus = "\n".join(text for _, text in calibration)
    for item in shipped.polarity_items()[:50]:
        sentence = item["query"].removeprefix("Review: ").split("\n")[0]
        assert sentence not in corpus


def test_analogy_items():
    items = shipped.analogy_items()
    sections = shipped.analogy_sections()
    assert len(sections) == 14 and sum(map(len, sections.values())) == 19544
    assert {item["section"] for item in items[:14]} == set(sections)  # interleaved sections
    for item in items:
        words = item["query"].split()  # "a is to b as c is to"
        a, b, c = words[0], words[3], words[5]
        choices = item["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4
        answer = choices[item["label"]]
        assert (a, b, c, answer) in set(sections[item["section"]])
        answers_of_section = {d for *_, d in sections[item["section"]]}
        assert set(choices) <= answers_of_section  # distractors of the same kind
    positions = collections.Counter(item["label"] for item in items)
    assert all(0.15 <= positions[k] / len(items) <= 0.35 for k in range(4)), positions  # no gold-position bias


def test_analogy_example_reads_like_the_brief():
    rows = shipped.analogy_sections()["capital-common-countries"]
    assert rows[0] == ("Athens", "Greece", "Baghdad", "Iraq")


def test_polarity_items():
    items = shipped.polarity_items()
    assert all(item["choices"] == ["negative", "positive"] for item in items)
    labels = [item["label"] for item in items]
    assert collections.Counter(labels) == {0: 100, 1: 100}
    assert labels[:10] == [0, 1] * 5  # interleaved: any even prefix is balanced
    assert all(" ," not in item["query"] for item in items)  # tokenization undone
    assert len({item["query"] for item in items}) == 200


def test_lambada_items():
    for item in wiki.lambada_items():
        target = item["target"]
        assert re.fullmatch(r" [A-Za-z]{3,}", target)
        assert 40 <= len((item["context"] + target).split()) <= 150
        assert re.search(rf"\b{target.strip()}\b", item["context"], flags=re.IGNORECASE)
        assert not item["context"].endswith(" ")


def test_hellaswag_items(split):
    _, heldout = split
    heldout_text = dict(heldout)
    items = wiki.hellaswag_items()
    for item in items:
        choices = item["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4
        own = heldout_text[item["title"]]
        assert item["query"] + " " + choices[item["label"]] in own  # the true next sentence
        for k, choice in enumerate(choices):
            if k != item["label"]:  # distractors come from OTHER held-out articles
                assert choice not in own
                assert any(choice in text for title, text in heldout if title != item["title"])
    positions = collections.Counter(item["label"] for item in items)
    assert all(0.15 <= positions[k] / len(items) <= 0.35 for k in range(4)), positions


def test_wikippl_items():
    for item in wiki.wikippl_items():
        assert item["text"] and (len(item["text"].split()) <= 200 or "\n" not in item["text"])


@pytest.mark.parametrize("task", OFFLINE_TASKS)
def test_lm_eval_finds_and_builds_each_task(task):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)
    built = manager.load([task])["tasks"][task]
    docs = list(built.test_docs())
    assert len(docs) == BUILDERS[task][1]
    assert (TASKS_DIR / f"{task}.yaml").is_file()
    assert (TASKS_DIR / "README.md").read_text().count(f"`{task}`") >= 1  # documented
