"""The examples work on the real teacher: greedy transcription in dreidel reproduces the expected
token ids and text of every bundled clip (MANIFEST "Decoding" rules)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from shared_data import shared_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_byte_level_detokenizer_round_trips_every_byte():
    decoder = _example("transcribe_whisper").byte_decoder()
    assert sorted(decoder.values()) == list(range(256))


@pytest.mark.parametrize("clip", [0, 1, 2])
def test_transcribe_example_reproduces_expected_text(clip):
    folder = shared_path("onnx", "whisper-tiny-en")
    example = _example("transcribe_whisper")
    from importers.onnx_to_dreidel import load
    generation = json.loads((folder / "generation_config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    entry = json.loads((folder / "transcripts.json").read_text())["clips"][clip]
    vocabulary = {i: token for token, i in tokenizer["model"]["vocab"].items()}
    special = {t["id"] for t in tokenizer["added_tokens"]}
    features = np.load(folder / entry["logmel"], allow_pickle=False)
    tokens = example.transcribe(load(folder / "encoder_model.onnx"), load(folder / "decoder_model.onnx"),
                                features, generation)
    assert tokens == entry["expected_token_ids"]
    assert example.detokenize(tokens, vocabulary, special) == entry["expected_text"]
