"""Tasks built from text files that ship inside the gensim wheel (`gensim/test/test_data/`).

- `spd_analogy`: word analogies from word2vec's `questions-words.txt`, as 4-way multiple choice.
- `spd_polarity`: movie-review sentence polarity from `pang_lee_polarity.cor`, 2-way.

Neither source overlaps the calibration text (Wikipedia articles), so both are held out by
construction. Every builder is deterministic: a fixed seed drives one `random.Random`, and the item
order is fixed so that lm-eval's `--limit` (which keeps the first items) stays balanced.
"""
from __future__ import annotations

import importlib.util
import random
import re
from functools import lru_cache
from pathlib import Path

import datasets

SEED = 1234
ANALOGY_CHOICES = 4


def gensim_test_data() -> Path:
    """The folder of real text that the gensim wheel ships."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gensim is not installed; the offline tasks read its shipped test data. "
                           "Fix: pip install gensim==4.4.0 (requirements.txt).")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data"


def as_dataset(items: list[dict]) -> datasets.DatasetDict:
    """lm-eval reads the `test` split of what `custom_dataset` returns."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def interleave(groups: list[list[dict]]) -> list[dict]:
    """Round-robin over groups, so that the first k items of the result cover every group."""
    out, depth = [], max(len(g) for g in groups)
    for i in range(depth):
        out.extend(g[i] for g in groups if i < len(g))
    return out


# --- spd_analogy ------------------------------------------------------------------------------

def analogy_sections() -> dict[str, list[tuple[str, str, str, str]]]:
    """questions-words.txt as {section: [(a, b, c, d), ...]}: "a is to b as c is to d"."""
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    name = None
    for line in (gensim_test_data() / "questions-words.txt").read_text().splitlines():
        if line.startswith(":"):
            name = line[1:].strip()
            sections[name] = []
        elif line.strip():
            sections[name].append(tuple(line.split()))
    return sections


@lru_cache(maxsize=None)
def analogy_items(n_items: int = 400, seed: int = SEED) -> tuple[dict, ...]:
    """4-way multiple choice: the answer plus 3 distractors drawn from the answers of the same section.

    Each section's questions are shuffled with the seed, then sections are interleaved (so every
    section is represented in the first 14 items), and the first `n_items` are kept. Distractors are
    other answer-column words of the same section (countries for capitals, adverbs for adverbs...),
    never a word of the question; the gold position is drawn from the same generator.
    """
    groups = []
    for name, rows in analogy_sections().items():
        rng = random.Random(f"{seed}:{name}")  # one generator per section: a prefix never changes
        answers = sorted({d for _, _, _, d in rows})
        order = list(range(len(rows)))
        rng.shuffle(order)
        items = []
        for k in order[: n_items]:  # no section needs more than n_items
            a, b, c, d = rows[k]
            pool = [w for w in answers if w not in (a, b, c, d)]
            choices = rng.sample(pool, ANALOGY_CHOICES - 1)
            label = rng.randrange(ANALOGY_CHOICES)
            choices.insert(label, d)
            items.append({"section": name, "query": f"{a} is to {b} as {c} is to",
                          "choices": choices, "label": label})
        groups.append(items)
    return tuple(interleave(groups)[:n_items])


def analogy_dataset(n_items: int = 400, seed: int = SEED, **_metadata) -> datasets.DatasetDict:
    return as_dataset(list(analogy_items(n_items, seed)))


# --- spd_polarity ------------------------------------------------------------------------------

POLARITY_LABELS = ("negative", "positive")


def detokenize(text: str) -> str:
    """Undo the corpus' tokenization ("it 's so laddish , only" -> "it's so laddish, only")."""
    text = re.sub(r"\s+([,.;:!?%)\]])", r"\1", text.strip())
    text = re.sub(r"([(\[])\s+", r"\1", text)
    return re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


@lru_cache(maxsize=None)
def polarity_items(n_items: int = 200, seed: int = SEED) -> tuple[dict, ...]:
    """2-way choice between " negative" and " positive" for a review sentence.

    The file holds 100 negative then 100 positive sentences (latin-1). Each class is shuffled with
    the seed and the classes are interleaved, so any prefix is balanced (chance = 0.5 exactly at even
    sizes).
    """
    rng = random.Random(seed)
    by_label: dict[int, list[dict]] = {0: [], 1: []}
    raw = (gensim_test_data() / "pang_lee_polarity.cor").read_text(encoding="latin-1")
    for line in raw.splitlines():
        tag, _, text = line.partition(" ")
        label = {"__label__neg": 0, "__label__pos": 1}[tag]
        by_label[label].append({"query": f"Review: {detokenize(text)}\nSentiment:",
                                "choices": list(POLARITY_LABELS), "label": label})
    for items in by_label.values():
        rng.shuffle(items)
    return tuple(interleave([by_label[0], by_label[1]])[:n_items])


def polarity_dataset(n_items: int = 200, seed: int = SEED, **_metadata) -> datasets.DatasetDict:
    return as_dataset(list(polarity_items(n_items, seed)))
