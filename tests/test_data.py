"""spd_ref.calibration.data: the offline Wikipedia split, calibration windows and held-out windows."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from spd_ref.calibration import data
from spd_ref.models import smollm2_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def split():
    return data.article_split()


def _texts(articles) -> str:
    return "\n".join(text for _, text in articles)


def _is_slice_of(window: torch.Tensor, stream: torch.Tensor) -> bool:
    n = window.numel()
    starts = (stream[: stream.numel() - n + 1] == window[0]).nonzero().flatten().tolist()
    return any(torch.equal(stream[s:s + n], window) for s in starts)


def _text_pieces(tokenizer, window: torch.Tensor) -> list[str]:
    # Decode a window into the runs of text between document separators; trim a few characters at
    # each end, where a window may cut a multi-byte character in half.
    pieces = tokenizer.decode(window).split(tokenizer.eos_token)
    return [p[3:-3].strip() for p in pieces if len(p.strip()) > 40]


def test_articles_are_clean_prose() -> None:
    articles = data.wikipedia_articles()
    assert len(articles) == 106
    assert len({title for title, _ in articles}) == len(articles)
    for title, text in articles:
        assert text and not text.lower().startswith("#redirect"), title
        assert "'''" not in text and "\n\n\n" not in text and "  " not in text, title
        assert not any(line.startswith("==") for line in text.splitlines()), title
    assert articles[0][0] == "Anarchism"
    assert articles[0][1].startswith("Anarchism is a political philosophy")


def test_split_is_disjoint_and_covers_every_article(split) -> None:
    calibration, heldout = split
    titles = [title for title, _ in data.wikipedia_articles()]
    assert not {t for t, _ in calibration} & {t for t, _ in heldout}
    assert sorted(t for t, _ in calibration + heldout) == sorted(titles)
    assert [t for t, _ in heldout] == titles[4::5]  # [ours] index % 5 == 4 is held out
    assert (len(calibration), len(heldout)) == (85, 21)
    assert data.heldout_articles() == heldout


def test_split_is_deterministic(split) -> None:
    assert data.article_split() == split
    data._cached_articles.cache_clear()  # the next call rereads the JSON cache from disk
    assert data.article_split() == split
    other_calibration, other_heldout = data.article_split(heldout_every=3)
    assert len(other_heldout) == 106 // 3 and len(other_calibration) == 106 - 106 // 3


@pytest.mark.slow  # extracts the Wikipedia dump twice
def test_cache_is_written_and_a_damaged_one_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPD_REF_CACHE", str(tmp_path))
    data._cached_articles.cache_clear()
    try:
        articles = data.wikipedia_articles()
        cached = json.loads((tmp_path / data.ARTICLES_CACHE).read_text(encoding="utf-8"))
        assert [tuple(a) for a in cached["articles"]] == articles
        (tmp_path / data.ARTICLES_CACHE).write_text("{not json")
        data._cached_articles.cache_clear()
        assert data.wikipedia_articles() == articles
    finally:
        data._cached_articles.cache_clear()  # later tests go back to the project cache


def test_token_stream_separates_documents_with_eos(tokenizer) -> None:
    stream = data.token_stream(tokenizer, ["Hello world.", "Second document."])
    first = tokenizer("Hello world.", add_special_tokens=False)["input_ids"]
    second = tokenizer("Second document.", add_special_tokens=False)["input_ids"]
    assert stream.tolist() == first + [tokenizer.eos_token_id] + second


def test_calibration_windows_are_slices_of_calibration_text(tokenizer, split) -> None:
    calibration, heldout = split
    windows = data.calibration_tokens(tokenizer, n_samples=4, seq_len=256, seed=1)
    assert windows.shape == (4, 256) and windows.dtype == torch.long
    stream = data.token_stream(tokenizer, [text for _, text in calibration])
    assert all(_is_slice_of(w, stream) for w in windows)
    calibration_text, heldout_text = _texts(calibration), _texts(heldout)
    pieces = [p for w in windows for p in _text_pieces(tokenizer, w)]
    assert pieces and all(p in calibration_text and p not in heldout_text for p in pieces)


def test_calibration_windows_are_seeded(tokenizer) -> None:
    rng_before = torch.get_rng_state()
    first = data.calibration_tokens(tokenizer, n_samples=8, seq_len=64, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # a private generator: global RNG untouched
    assert torch.equal(data.calibration_tokens(tokenizer, n_samples=8, seq_len=64, seed=3), first)
    assert not torch.equal(data.calibration_tokens(tokenizer, n_samples=8, seq_len=64, seed=4), first)
    # a larger draw begins with the smaller one: recover_samples widens B2B's data under the same scan
    assert torch.equal(data.calibration_tokens(tokenizer, n_samples=32, seq_len=64, seed=3)[:8], first)


def test_heldout_windows_are_consecutive_slices_of_heldout_text(tokenizer, split) -> None:
    calibration, heldout = split
    stream = data.token_stream(tokenizer, [data.without_calibration_sentences(text) for _, text in heldout])
    windows = data.heldout_tokens(tokenizer, seq_len=128, max_windows=5)
    assert torch.equal(windows, stream[: 5 * 128].view(5, 128))
    raw = data.token_stream(tokenizer, [text for _, text in heldout])
    assert torch.equal(data.heldout_tokens(tokenizer, seq_len=128, max_windows=5, drop_shared=False),
                       raw[: 5 * 128].view(5, 128))
    everything = data.heldout_tokens(tokenizer, seq_len=512, max_windows=None)
    assert everything.shape == (stream.numel() // 512, 512)
    calibration_text, heldout_text = _texts(calibration), _texts(heldout)
    pieces = [p for w in everything[::25] for p in _text_pieces(tokenizer, w)]
    assert pieces and all(p in heldout_text and p not in calibration_text for p in pieces)


def test_wikitext2_source_joins_the_training_split(tokenizer, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    lines = [" = Valkyria Chronicles = ", "", " The game began development in 2010 . "] * 50

    def fake_load_dataset(path, name, split):
        assert (path, name, split) == ("wikitext", "wikitext-2-raw-v1", "train")
        return {"text": lines}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    windows = data.calibration_tokens(tokenizer, n_samples=3, seq_len=32, source="wikitext2")
    stream = data.token_stream(tokenizer, ["\n\n".join(lines)])
    assert windows.shape == (3, 32) and all(_is_slice_of(w, stream) for w in windows)


def test_wikitext2_without_a_hub_says_what_to_do(tokenizer, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):  # what datasets raises with HF_DATASETS_OFFLINE=1 or no network
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="wikitext2.*source='offline'"):
        data.calibration_tokens(tokenizer, source="wikitext2")


@pytest.mark.parametrize("call, message", [
    (lambda tok: data.calibration_tokens(tok, seq_len=1), "seq_len=1 .*seq_len >= 2"),
    (lambda tok: data.calibration_tokens(tok, n_samples=0), "n_samples=0 .*n_samples >= 1"),
    (lambda tok: data.calibration_tokens(tok, seq_len=10**7), "seq_len=10000000 .*use seq_len <="),
    (lambda tok: data.calibration_tokens(tok, source="c4"), "source='c4' .*'offline'"),
    (lambda tok: data.heldout_tokens(tok, seq_len=0), "seq_len=0 .*seq_len >= 2"),
    (lambda tok: data.heldout_tokens(tok, seq_len=10**7), "seq_len=10000000 .*held-out"),
    (lambda tok: data.heldout_tokens(tok, max_windows=0), "max_windows=0 .*None"),
    (lambda tok: data.article_split(heldout_every=1), "heldout_every=1 .*>= 2"),
], ids=["short-seq", "no-samples", "too-long", "unknown-source", "heldout-short-seq",
        "heldout-too-long", "no-windows", "split-all"])
def test_bad_input_names_the_value_and_the_fix(tokenizer, call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call(tokenizer)


def test_heldout_text_leaves_out_sentences_of_calibration_articles(split) -> None:
    calibration, heldout = split
    shared = data.calibration_sentences()
    quoted = next(s for s in sorted(shared) if s[0].isupper() and s.endswith(".") and s.count(".") == 1)
    text = f"Our own first line stays here.\nA held-out opening. {quoted} A held-out close."
    assert data.without_calibration_sentences(text) == ("Our own first line stays here.\n"
                                                       "A held-out opening. A held-out close.")
    changed = [t for t, text in heldout if data.without_calibration_sentences(text) != text]
    assert changed and len(changed) < len(heldout)  # a few articles quote calibration text
    for _, text in heldout:
        kept = data.without_calibration_sentences(text)
        assert not any(s.strip() in shared for line in kept.split("\n") for s in data.SENTENCE_END.split(line))
