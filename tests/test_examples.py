"""The examples work on the real teacher: native greedy transcription from the WAVs reproduces the
expected token ids and text of every bundled clip (MANIFEST "Decoding" rules)."""
import importlib.util
import json
from pathlib import Path


from shared_data import shared_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transcribe_example_reproduces_expected_text():
    folder = shared_path("onnx", "whisper-tiny-en")
    entries = json.loads((folder / "transcripts.json").read_text())["clips"]
    results = _example("transcribe_whisper").transcribe_clips(folder, [0, 1, 2])
    assert [r["token_ids"] for r in results] == [e["expected_token_ids"] for e in entries]
    assert [r["text"] for r in results] == [e["expected_text"] for e in entries]
