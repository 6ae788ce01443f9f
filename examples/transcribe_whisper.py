"""Transcribe speech with the real Whisper tiny.en teacher, natively in dreidel, from WAV files.

    python examples/transcribe_whisper.py [--whisper ../shared/onnx/whisper-tiny-en] [--clip 0] [--beam-size 1]

`Whisper.load(folder)` maps the ONNX export's initializers onto a native model (Hugging Face
parameter names); `transcribe` reads the WAV, computes Whisper's log-mel features, runs the encoder
once and decodes greedily with a key/value cache (Whisper's rules: prompt
<|startoftranscript|><|notimestamps|>, suppressed tokens, stop at <|endoftext|>).  The same is
`dreidel transcribe clip.wav --model folder`.
"""
import argparse
import time
from pathlib import Path

from dreidel.models.whisper import Whisper


def transcribe_clips(folder, clips, beam_size=1):
    """[{"text", "token_ids"}] for the export folder's `clips/clip_N.wav` files."""
    model = Whisper.load(folder)
    return model.transcribe([str(Path(folder) / f"clips/clip_{n}.wav") for n in clips], beam_size=beam_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/onnx/whisper-tiny-en")
    parser.add_argument("--clip", type=int, nargs="+", default=[0])
    parser.add_argument("--beam-size", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    model = Whisper.load(args.whisper)
    print(f"loaded the native model from {args.whisper} in {time.perf_counter() - start:.1f} s")
    for clip in args.clip:
        start = time.perf_counter()
        result = model.transcribe(str(args.whisper / f"clips/clip_{clip}.wav"), beam_size=args.beam_size)
        print(f"clip {clip}: {result['text']!r} ({len(result['token_ids']) - 2} tokens in "
              f"{time.perf_counter() - start:.2f} s)")
        print("token ids:", result["token_ids"])


if __name__ == "__main__":
    main()
