"""Tasks built from the held-out Wikipedia articles (`spd_ref.calibration.data.heldout_articles()`).

- `spd_lambada`: LAMBADA-style prediction of a passage's final word (greedy accuracy, perplexity).
- `spd_hellaswag`: HellaSwag-style choice of a paragraph's true next sentence among sentences of
  OTHER held-out articles (4-way).
- `spd_wikippl`: perplexity of held-out article chunks (loglikelihood_rolling).

Only held-out articles are read (the split is by article, spd_ref.calibration.data), and items that share a
sentence with a calibration article (Wikipedia articles quote each other) are dropped. Builders are deterministic: seeded
`random.Random` generators, and items interleaved over articles so that lm-eval's `--limit` (which
keeps the first items) still spans every article.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

import datasets

from spd_ref.calibration.data import SENTENCE_END, calibration_sentences

from .shipped import SEED, as_dataset, interleave

_WORD = re.compile(r"[A-Za-z]{3,}")  # a target word: letters only, at least 3
_NOT_PROSE = ("*", "|", "{", "!", ":", ";", "#")


def prose_paragraphs(text: str) -> list[list[str]]:
    """The article's prose paragraphs, each a list of sentences (lists, tables, headings dropped)."""
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith(_NOT_PROSE) or not line.endswith((".", "!", "?")) or len(line.split()) < 12:
            continue
        paragraphs.append([s.strip() for s in SENTENCE_END.split(line) if s.strip()])
    return paragraphs


def _heldout() -> list[tuple[str, str]]:
    from spd_ref.calibration.data import heldout_articles

    return heldout_articles()


def _sentences(text: str) -> list[str]:
    return [s.strip() for line in text.split("\n") for s in SENTENCE_END.split(line.strip()) if s.strip()]


def shares_calibration_text(text: str, min_words: int = 6) -> bool:
    """Whether `text` has a sentence of >= min_words words that is also in a calibration article.

    The split is by article, but Wikipedia articles quote each other (a held-out "Art" shares
    sentences with a calibration article), so items with such a sentence are dropped too.
    """
    calibration = calibration_sentences(min_words)
    return any(s in calibration for s in _sentences(text) if len(s.split()) >= min_words)


def _ordered(groups: list[list[dict]], seed: int, n_items: int) -> tuple[dict, ...]:
    """Shuffle each article's items with its own generator, interleave articles, keep n_items."""
    for k, items in enumerate(groups):
        random.Random(f"{seed}:{k}").shuffle(items)
    return tuple(interleave([g for g in groups if g])[:n_items])


# --- spd_lambada -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def lambada_items(n_items: int = 250, seed: int = SEED, min_words: int = 40, max_words: int = 150,
                  require_in_context: bool = True) -> tuple[dict, ...]:
    """Passages of consecutive sentences of one paragraph; the target is the passage's last word.

    For every sentence of a prose paragraph, the passage is the shortest run of sentences ending
    with it that has >= `min_words` words. It is kept if it has at most `max_words`, ends with "."
    right after a word of >= 3 letters (the target), and (with `require_in_context`, as for most
    LAMBADA passages) the target also occurs earlier in the passage, so broad context, not only the
    last sentence, tells it. The final "." is dropped: LAMBADA passages end on the target word.
    Passages that share a sentence with a calibration article are left out.
    """
    groups = []
    for title, text in _heldout():
        items = []
        for sentences in prose_paragraphs(text):
            for end in range(len(sentences)):
                start = end
                while start > 0 and len(" ".join(sentences[start:end + 1]).split()) < min_words:
                    start -= 1
                passage = " ".join(sentences[start:end + 1])
                if not min_words <= len(passage.split()) <= max_words or not passage.endswith("."):
                    continue
                context, _, last = passage[:-1].rpartition(" ")
                if not _WORD.fullmatch(last):
                    continue
                if require_in_context and not re.search(rf"\b{last}\b", context, flags=re.IGNORECASE):
                    continue
                if shares_calibration_text(passage):
                    continue
                items.append({"title": title, "context": context, "target": " " + last})
        groups.append(items)
    return _ordered(groups, seed, n_items)


def lambada_dataset(n_items: int = 250, seed: int = SEED, **_metadata) -> datasets.DatasetDict:
    return as_dataset(list(lambada_items(n_items, seed)))


# --- spd_hellaswag -----------------------------------------------------------------------------

HELLASWAG_CHOICES = 4


@lru_cache(maxsize=None)
def hellaswag_items(n_items: int = 400, seed: int = SEED, context_sentences: int = 1,
                    min_ending_words: int = 8, max_ending_words: int = 30) -> tuple[dict, ...]:
    """Context = `context_sentences` sentences of a paragraph; the true ending is the next sentence.

    Distractors are 3 sentences (same length limits) from other held-out articles, drawn from the
    ones closest in length to the true ending (the 30 nearest word counts) so that length alone
    does not give the answer away; the gold position is drawn from the same generator. Each
    paragraph gives at most one item. Items and distractors that share a sentence with a
    calibration article are left out (`shares_calibration_text`).
    """
    def ending_ok(s: str) -> bool:
        return min_ending_words <= len(s.split()) <= max_ending_words

    articles = _heldout()
    candidates = []  # (article index, title, context, ending)
    endings = []  # (article index, sentence): the distractor pool
    for a, (title, text) in enumerate(articles):
        for sentences in prose_paragraphs(text):
            endings += [(a, s) for s in sentences if ending_ok(s) and not shares_calibration_text(s)]
            if (len(sentences) > context_sentences and ending_ok(sentences[context_sentences])
                    and not shares_calibration_text(" ".join(sentences[:context_sentences + 1]))):
                candidates.append((a, title, " ".join(sentences[:context_sentences]),
                                   sentences[context_sentences]))
    groups: list[list[dict]] = [[] for _ in articles]
    for k, (a, title, context, ending) in enumerate(candidates):
        rng = random.Random(f"{seed}:hellaswag:{k}")
        words = len(ending.split())
        pool = sorted((abs(len(s.split()) - words), s) for b, s in endings if b != a)
        choices = rng.sample([s for _, s in pool[:30]], HELLASWAG_CHOICES - 1)
        label = rng.randrange(HELLASWAG_CHOICES)
        choices.insert(label, ending)
        groups[a].append({"title": title, "query": context, "choices": choices, "label": label})
    return _ordered(groups, seed, n_items)


def hellaswag_dataset(n_items: int = 400, seed: int = SEED, **_metadata) -> datasets.DatasetDict:
    return as_dataset(list(hellaswag_items(n_items, seed)))


# --- spd_wikippl -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def wikippl_items(n_docs: int = 40, max_words: int = 200) -> tuple[dict, ...]:
    """Held-out articles cut at line breaks into chunks of at most `max_words` words (a longer single
    line is its own chunk); chunks that share a sentence with a calibration article are left out;
    chunks interleaved over articles, the first `n_docs` kept."""
    groups = []
    for title, text in _heldout():
        chunks, lines = [], []
        for line in text.split("\n"):
            if lines and len(" ".join(lines + [line]).split()) > max_words:
                chunks.append("\n".join(lines).strip())
                lines = []
            lines.append(line)
        chunks.append("\n".join(lines).strip())
        groups.append([{"title": title, "text": c} for c in chunks if c and not shares_calibration_text(c)])
    return tuple(interleave(groups)[:n_docs])  # file order inside an article: a prefix reads on


def wikippl_dataset(n_docs: int = 40, **_metadata) -> datasets.DatasetDict:
    return as_dataset(list(wikippl_items(n_docs)))
