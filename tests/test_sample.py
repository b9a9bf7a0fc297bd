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


def corpus(unit, symbols):
    import numpy as np

    empty = np.zeros(0, dtype=np.int64)
    if unit == "char":  # byte values, as the reader gives them
        symbols = np.asarray(symbols, dtype=np.uint8)
    return readers.Corpus(empty, empty, empty, len(symbols), unit, symbols)


def test_primes_of_unknown_words_and_of_nothing():
    import numpy as np

    words = corpus("word", ["<eos>", "<unk>", "a"])
    np.testing.assert_array_equal(encode(words, "a zz\nyy"), [2, 1, 0, 1])  # unknown words read <unk>
    with pytest.raises(RHNError) as e:
        encode(corpus("word", ["<eos>", "a"]), "a zz yy")
    assert str(e.value) == "sample_prime has words the model does not know: zz yy"
    assert encode(words, "").tolist() == [0]
    # an empty prime starts a line, else a word, else at the first symbol the model has
    assert encode(corpus("char", np.array([32, 10, 97])), "").tolist() == [1]
    assert encode(corpus("char", np.array([97, 32, 98])), "").tolist() == [1]
    assert encode(corpus("char", np.array([97, 98])), "").tolist() == [0]
    assert encode(corpus("char", np.array([98, 97])), "").tolist() == [0]
    assert encode(corpus("char", np.array([88, 32])), "").tolist() == [1]  # a space, whatever else it has


def test_decoding_nothing_and_a_character_cut_in_two():
    import numpy as np

    chars = corpus("char", np.array([0xC3, 0xA9, 97]))
    assert decode(chars, []) == "" and decode(chars, [0, 1, 2]) == "éa"
    assert decode(chars, [2, 0]) == "a\ufffd"  # half of é: a replacement character, not an error
    assert decode(corpus("word", ["<eos>", "a", "b"]), [1, 2, 0, 1]) == "a b\na"


def test_sampling_from_a_folder_a_run_writes_says_so(char_model, capsys):
    import os

    from rhn_core.runlock import RunLock

    with RunLock(os.path.dirname(char_model["load_model"]), "training"):
        sample("torch", char_model, sample_length=5)
    out = capsys.readouterr().out
    assert f"Note: {char_model['load_model']} belongs to training (pid {os.getpid()}" in out
    assert "which is still writing; sampling from the file as it is now\n" in out


def test_a_checkpoint_of_another_shape_is_named_in_its_error(char_model, tmp_path):
    from rhn_core.checkpoint import load_checkpoint, save_checkpoint

    params, state = load_checkpoint(char_model["load_model"])
    other = str(tmp_path / "other.npz")
    save_checkpoint(other, {n: a for n, a in params.items() if n != "softmax_b"} | {"extra": params["softmax_b"]})
    with pytest.raises(RHNError, match=f"^{other} does not match the config"):
        sample("torch", {**char_model, "load_model": other})
