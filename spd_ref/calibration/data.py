"""Calibration and evaluation text (METHOD.md section 3).

The paper calibrates on 128 random 2048-token windows of WikiText2-train. There is no dataset hub on
the machines this project is built on, so the default source is the English Wikipedia excerpt that
ships inside the gensim wheel (RESOURCES.md): WikiText2 is Wikipedia too, which makes this the
closest offline stand-in. `source="wikitext2"` uses the paper's data wherever the hub is reachable.

Calibration and evaluation must not share text, so the articles are split BY ARTICLE:
**[ours]** every 5th article in file order (index % 5 == 4) is held out for evaluation
(perplexity); the rest is calibration text. Wikipedia articles quote each other, so [ours] the
held-out windows also leave out every held-out sentence of 6 or more words that a calibration
article contains (8 of 7663 sentences), as the task suite drops such items. `calibration_tokens`
defaults to 32 windows of 512 tokens; `python -m spd_ref calibrate` uses 8 x 256 **[ours]** (its
--samples/--seq-len; the paper: `calibration_tokens(tok, 128, 2048, source="wikitext2")`).

Token streams: each article is tokenized on its own (no special tokens) and the articles are joined
with the tokenizer's eos token, so a window that crosses an article boundary sees a document break,
as in pretraining. Windows are slices of that stream: calibration windows start at seeded random
offsets (they may overlap, as in GPTQ-style calibration); held-out windows are consecutive and
non-overlapping, for perplexity.
"""
from __future__ import annotations

import bz2
import functools
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from spd_ref.models import cache_dir

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
ARTICLES_CACHE = "enwiki_articles.json"
CACHE_VERSION = 1  # bump when the cleaning below changes, so stale caches are rebuilt
HELDOUT_EVERY = 5  # [ours] every 5th article is held out
SOURCES = ("offline", "wikitext2")

Article = tuple[str, str]  # (title, text)


# ---------------------------------------------------------------------------------------------------
# Articles: extract once from the gensim wheel, cache as JSON (extraction and wiki filtering are slow
# enough to matter when every test and notebook asks for them).
# ---------------------------------------------------------------------------------------------------

def wiki_dump() -> Path:
    """The bz2 Wikipedia excerpt inside the installed gensim package."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gensim is not installed; it carries the offline Wikipedia text. "
                           "Fix: pip install -r requirements.txt (gensim==4.4.0).")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / WIKI_DUMP
    if not path.exists():
        raise RuntimeError(f"{path} is missing; this gensim build does not ship its test data. "
                           "Fix: install the gensim==4.4.0 wheel from PyPI.")
    return path


def clean_wiki_text(text: str) -> str:
    """Light clean-up of `filter_wiki` output: readable prose, not a normalised corpus."""
    text = re.sub(r"'{2,}", "", text)  # ''italic'' and '''bold''' markup; keeps apostrophes
    # "==History==" -> "History": headings stay as their own line, like a section title in prose.
    text = re.sub(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", r"\2", text, flags=re.MULTILINE)
    # Templates (pronunciations, units) vanish and leave "(; , Akhilleus, )": trim the separators
    # they leave inside brackets, then drop brackets left empty.
    text = re.sub(r"\((?:\s*[,;])+\s*", "(", text)
    text = re.sub(r"(?:\s*[,;])+\s*\)", ")", text)
    text = re.sub(r"\s*\(\s*\)", "", text)
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()  # at most one blank line between paragraphs


def _extract_articles(dump: Path) -> list[Article]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(dump) as f:
        for title, markup, _page_id in extract_pages(f):
            if markup.lstrip().lower().startswith("#redirect"):
                continue  # about half the pages: one line pointing elsewhere
            text = clean_wiki_text(filter_wiki(markup))
            if text:
                articles.append((title, text))
    return articles


def _write_json_atomically(path: Path, payload: object) -> None:
    # Tests, notebooks and torchrun workers may build the cache at the same time: never expose a
    # half-written file, write elsewhere and rename.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".partial", delete=False,
                                     encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    os.chmod(f.name, 0o644)  # NamedTemporaryFile makes it private; a cache is for everyone
    os.replace(f.name, path)


@functools.cache
def _cached_articles() -> tuple[Article, ...]:
    dump = wiki_dump()
    key = {"version": CACHE_VERSION, "dump": dump.name, "dump_bytes": dump.stat().st_size}
    path = cache_dir() / ARTICLES_CACHE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["key"] == key:
            return tuple((title, text) for title, text in payload["articles"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or a stale or damaged one: rebuild it
    articles = _extract_articles(dump)
    _write_json_atomically(path, {"key": key, "articles": articles})
    return tuple(articles)


def wikipedia_articles() -> list[Article]:
    """All (title, text) articles of the offline Wikipedia excerpt, in file order, redirects skipped."""
    return list(_cached_articles())


def article_split(heldout_every: int = HELDOUT_EVERY) -> tuple[list[Article], list[Article]]:
    """(calibration_articles, heldout_articles), split by article, deterministic.

    [ours] Article i (file order) is held out when i % heldout_every == heldout_every - 1, so the
    default holds out articles 4, 9, 14, ... (a fifth of them), spread over the whole file.
    """
    if not isinstance(heldout_every, int) or heldout_every < 2:
        raise ValueError(f"heldout_every={heldout_every!r} would leave no calibration text; "
                         "use an integer >= 2 (every n-th article is held out).")
    calibration, heldout = [], []
    for index, article in enumerate(_cached_articles()):
        (heldout if index % heldout_every == heldout_every - 1 else calibration).append(article)
    return calibration, heldout


def heldout_articles() -> list[Article]:
    """The held-out (evaluation) articles: `article_split()[1]`."""
    return article_split()[1]


# Sentence ends: ., ! or ? then space and a capital or quote, except after initials and common
# abbreviations. Approximate, but Wikipedia prose is regular enough for it.
_ABBREV = r"(?<!\b[A-Z]\.)(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bvs\.)(?<!\bNo\.)(?<!\bc\.)"
SENTENCE_END = re.compile(_ABBREV + r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
SHARED_MIN_WORDS = 6  # [ours] a shared sentence this long is a quotation, not a coincidence


@functools.cache
def calibration_sentences(min_words: int = SHARED_MIN_WORDS) -> frozenset[str]:
    """Every sentence of >= min_words words in the calibration articles."""
    return frozenset(s for _, text in article_split()[0] for line in text.split("\n")
                     for s in SENTENCE_END.split(line.strip()) if len(s.split()) >= min_words)


def without_calibration_sentences(text: str, min_words: int = SHARED_MIN_WORDS) -> str:
    """`text` less its sentences that a calibration article also contains; other lines unchanged."""
    shared = calibration_sentences(min_words)
    lines = []
    for line in text.split("\n"):
        parts = SENTENCE_END.split(line)
        if any(p.strip() in shared for p in parts):
            line = " ".join(p for p in parts if p.strip() not in shared)
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Token windows
# ---------------------------------------------------------------------------------------------------

def token_stream(tokenizer, texts: Sequence[str]) -> torch.LongTensor:
    """The texts' token ids (no special tokens), one after another, separated by eos: shape (n,)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos token to separate documents; "
                         "set tokenizer.eos_token (e.g. to the model's end-of-text token).")
    # verbose=False: whole articles are longer than model_max_length, which is fine here because
    # only windows of seq_len tokens are ever fed to a model.
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    for i, article_ids in enumerate(ids):
        if i:
            stream.append(eos)
        stream.extend(article_ids)
    return torch.tensor(stream, dtype=torch.long)


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short: a window needs at least 2 tokens "
                         "(one to predict from, one to predict); use seq_len >= 2, e.g. 512.")


def _check_enough(stream: torch.Tensor, seq_len: int, what: str) -> None:
    if stream.numel() < seq_len:
        raise ValueError(f"seq_len={seq_len} is more than the {stream.numel()} tokens of {what}; "
                         f"use seq_len <= {stream.numel()}.")


def random_windows(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int) -> torch.LongTensor:
    """n_samples windows of seq_len tokens at seeded random offsets of `stream`: (n_samples, seq_len)."""
    generator = torch.Generator().manual_seed(seed)  # private generator: the global RNG is untouched
    starts = torch.randint(0, stream.numel() - seq_len + 1, (n_samples,), generator=generator)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def _wikitext2_train() -> str:
    try:
        import datasets

        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    except (OSError, ImportError) as err:  # offline hubs raise ConnectionError (an OSError)
        raise RuntimeError(f"source='wikitext2' needs the Hugging Face dataset hub, which is not "
                           f"reachable here ({type(err).__name__}: {err}). Fix: use "
                           "source='offline' (Wikipedia shipped with gensim), or unset "
                           "HF_DATASETS_OFFLINE where a hub is reachable.") from err
    return "\n\n".join(rows["text"])  # the customary (GPTQ) join of WikiText2's lines


def calibration_tokens(tokenizer, n_samples: int = 32, seq_len: int = 512, seed: int = 0,
                       source: str = "offline") -> torch.LongTensor:
    """Calibration windows, (n_samples, seq_len) token ids, reproducible for a given seed.

    source="offline": the calibration articles of `article_split()`; source="wikitext2": the paper's
    WikiText2-train (needs the dataset hub). [ours] defaults 32 x 512 for CPUs; the paper: 128 x 2048.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; use one of {SOURCES}.")
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} gives no calibration data; use n_samples >= 1.")
    _check_seq_len(seq_len)
    if source == "offline":
        texts, what = [text for _, text in article_split()[0]], "the offline calibration articles"
    else:
        texts, what = [_wikitext2_train()], "WikiText2-train"
    stream = token_stream(tokenizer, texts)
    _check_enough(stream, seq_len, what)
    return random_windows(stream, n_samples, seq_len, seed)


def heldout_tokens(tokenizer, seq_len: int = 512, max_windows: int | None = 16,
                   drop_shared: bool = True) -> torch.LongTensor:
    """Consecutive non-overlapping windows of the held-out articles, in order: (n, seq_len).

    For perplexity. n = as many whole windows as the held-out text has, at most `max_windows`
    (None: all of them; [ours] default 16 keeps a CPU evaluation to seconds). Sentences shared
    with a calibration article are left out (module docstring) unless drop_shared=False (the text
    before issue 12, to compare with older measurements).
    """
    _check_seq_len(seq_len)
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows={max_windows} gives no evaluation data; "
                         "use max_windows >= 1, or None for every window.")
    texts = [without_calibration_sentences(text) if drop_shared else text for _, text in heldout_articles()]
    stream = token_stream(tokenizer, texts)
    _check_enough(stream, seq_len, "the held-out articles")
    n = stream.numel() // seq_len  # the tail shorter than a window is dropped
    if max_windows is not None:
        n = min(n, max_windows)
    return stream[: n * seq_len].view(n, seq_len)
