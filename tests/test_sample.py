"""The sample command: a checkpoint writes text, the same from either backend for the same seed."""

import pytest

from conftest import run_experiment
from rhn_core.data import readers
from rhn_core.errors import RHNError
from rhn_core.sample import decode, encode


@pytest.fixture(scope="module")
def char_model(small_text, tmp_path_factory):
    """A tiny float64 character model of the demo text, trained for two epochs."""
    pytest.importorskip("torch")  # trained and sampled with the torch backend
    save_dir = tmp_path_factory.mktemp("model")
    run_experiment(
        named=["tiny"],
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        dtype="float64",
        save_dir=str(save_dir),
        seed=1,
    )
    return dict(dataset="chars", data_path=small_text, dtype="float64", load_model=str(save_dir / "best.npz"))


def sample(backend, model, **updates):
    return run_experiment("sample", ["tiny"], backend=backend, **model, **updates).result


def test_either_backend_writes_the_same_text_for_the_same_seed(char_model):
    pytest.importorskip("tensorflow")
    texts = {b: sample(b, char_model, sample_prime="Alice ", sample_length=40, seed=5) for b in ("torch", "tf")}
    assert texts["torch"] == texts["tf"]
    assert texts["torch"].startswith("Alice ") and len(texts["torch"]) == len("Alice ") + 40  # ASCII: 1 byte, 1 char
    assert sample("torch", char_model, sample_prime="Alice ", sample_length=40, seed=6) != texts["torch"]


def test_printed_sample_has_line_breaks_for_the_texts_carriage_returns(char_model, capsys):
    """The demo text ends its lines with CRLF: the sample keeps the bytes, the log gets plain line breaks."""
    text = sample("torch", char_model, sample_prime="Alice\r\nsaid", sample_length=5, seed=5)
    assert text.startswith("Alice\r\nsaid")
    out = capsys.readouterr().out
    assert "Alice\nsaid" in out and "\r" not in out


def test_temperature_sharpens_the_models_distribution(char_model):
    """Near 0 the draw is the most likely symbol: a run of different seeds writes one text."""
    greedy = {sample("torch", char_model, sample_length=15, temperature=1e-3, seed=s) for s in (1, 2, 3)}
    varied = {sample("torch", char_model, sample_length=15, temperature=2.0, seed=s) for s in (1, 2, 3)}
    assert len(greedy) == 1 and len(varied) == 3


def test_words_for_ptb_and_a_sample_at_the_end_of_training(synthetic_ptb, tmp_path):
    pytest.importorskip("torch")
    run = run_experiment(
        named=["tiny"],
        data_path=synthetic_ptb,
        save_dir=str(tmp_path),
        max_max_epoch=1,
        sample_at_end=True,
        sample_length=25,
        sample_prime="w1 w7 w3",
    )
    text = run.info["sample"]
    assert text.startswith("w1 w7 w3")
    vocab = set(readers.read_ptb(synthetic_ptb).symbols)
    assert set(text.split()) <= vocab and len(text.split()) + text.count("\n") == 28  # <eos> is a line break


def test_prime_and_text_round_trip(small_text, synthetic_ptb):
    chars, words = readers.read_chars(small_text), readers.read_ptb(synthetic_ptb)
    assert decode(chars, encode(chars, "Alice said")) == "Alice said"
    assert decode(words, encode(words, "w1 w2\nw3")) == "w1 w2\nw3"
    assert decode(words, encode(words, "")) == "\n"  # '' starts a sentence


@pytest.mark.parametrize(
    "updates, message",
    [
        (dict(load_model=""), r"sample needs load_model=PATH"),
        (dict(temperature=0), r"temperature=0 must be a positive number"),
        (dict(sample_length=0), r"sample_length=0 must be a positive integer"),
        (
            dict(sample_prime="Alice \u2603"),
            "sample_prime has characters that never occur in the training text: '\u2603'$",
        ),
    ],
)
def test_bad_sample_requests_are_one_line_errors(char_model, updates, message):
    with pytest.raises(RHNError, match=message):
        sample("torch", {**char_model, **updates})
