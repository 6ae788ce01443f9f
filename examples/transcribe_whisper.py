"""Transcribe speech with the real Whisper tiny.en teacher, imported from ONNX and run in dreidel.

    python examples/transcribe_whisper.py [--whisper ../shared/onnx/whisper-tiny-en] [--clip 0]

Greedy decoding with Whisper's rules (prompt <|startoftranscript|><|notimestamps|>, suppressed tokens
masked every step, the begin-suppressed ones at the first step, stop at <|endoftext|>); the decoder
has no key/value cache, so each step re-reads the whole prefix.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import dreidel
from importers.onnx_to_dreidel import load


def byte_decoder():
    """Inverse of GPT-2's byte → printable-character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    characters, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters)}


def detokenize(ids, vocabulary, special):
    table = byte_decoder()
    text = "".join(vocabulary[i] for i in ids if i in vocabulary and i not in special)
    return bytes(table[c] for c in text).decode("utf-8", errors="replace").strip()


def transcribe(encoder, decoder, features, generation, max_new=60):
    suppress = np.array(generation["suppress_tokens"])
    begin = np.array(generation["begin_suppress_tokens"])
    tokens = [generation["decoder_start_token_id"], generation["no_timestamps_token_id"]]
    with dreidel.no_grad():
        hidden = encoder(features)
        for step in range(max_new):
            logits = decoder(input_ids=np.array([tokens], np.int64), encoder_hidden_states=hidden)
            scores = logits.numpy()[0, -1].copy()
            scores[suppress] = -np.inf
            if step == 0:
                scores[begin] = -np.inf
            tokens.append(int(scores.argmax()))
            if tokens[-1] == generation["eos_token_id"]:
                break
    return tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/onnx/whisper-tiny-en")
    parser.add_argument("--clip", type=int, default=0)
    args = parser.parse_args()
    folder = args.whisper
    start = time.perf_counter()
    encoder, decoder = load(folder / "encoder_model.onnx"), load(folder / "decoder_model.onnx")
    print(f"imported encoder and decoder in {time.perf_counter() - start:.1f} s")
    generation = json.loads((folder / "generation_config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocabulary = {i: token for token, i in tokenizer["model"]["vocab"].items()}
    vocabulary.update({t["id"]: t["content"] for t in tokenizer["added_tokens"]})
    special = {t["id"] for t in tokenizer["added_tokens"]}
    features = np.load(folder / f"clips/clip_{args.clip}_logmel.npy", allow_pickle=False)
    start = time.perf_counter()
    tokens = transcribe(encoder, decoder, features, generation)
    print(f"clip {args.clip}: {detokenize(tokens, vocabulary, special)!r} "
          f"({len(tokens) - 2} tokens in {time.perf_counter() - start:.1f} s)")
    print("token ids:", tokens)


if __name__ == "__main__":
    main()
