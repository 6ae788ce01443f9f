"""`dreidel transcribe A.wav [B.wav …] --model DIR [--beam-size N] [--json]`."""
import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    """Transcribe WAV files; prints one line per file (or JSON with --json).  Returns an exit code."""
    parser = argparse.ArgumentParser(prog="dreidel transcribe", description="Speech to text with Whisper.")
    parser.add_argument("audio", nargs="+", type=Path, help="WAV files (any rate, resampled to 16 kHz)")
    parser.add_argument("--model", required=True, type=Path,
                        help="an ONNX export folder (encoder_model.onnx, decoder_model.onnx, config.json, "
                             "tokenizer.json) or a checkpoint saved by Whisper.save_pretrained")
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy (default); >1: beam search")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per encoder call / decode loop")
    parser.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {file, text, token_ids}")
    args = parser.parse_args(argv)
    if args.beam_size < 1 or args.batch_size < 1:
        parser.error("--beam-size and --batch-size must be at least 1")
    import dreidel
    from dreidel.audio import WavError
    from dreidel.models.whisper import Whisper
    if args.threads:
        dreidel.set_num_threads(args.threads)
    missing = [str(p) for p in args.audio if not p.is_file()]
    if missing:
        print(f"dreidel transcribe: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        model = Whisper.load(args.model)
    except (OSError, ValueError) as error:
        print(f"dreidel transcribe: cannot load the model from {args.model}: {error}", file=sys.stderr)
        return 2
    if model.tokenizer is None:
        print(f"dreidel transcribe: {args.model} has no tokenizer.json", file=sys.stderr)
        return 2
    try:
        results = model.transcribe([str(p) for p in args.audio], beam_size=args.beam_size,
                                   batch_size=args.batch_size, progress=len(args.audio) > args.batch_size)
    except WavError as error:
        print(f"dreidel transcribe: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"file": str(p), **r} for p, r in zip(args.audio, results)]))
    else:
        for path, result in zip(args.audio, results):
            print(f"{path}: {result['text']}" if len(args.audio) > 1 else result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
