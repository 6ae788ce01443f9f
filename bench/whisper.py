"""Whisper benchmark: the native dreidel model against onnxruntime on the same export.

    python bench/whisper.py [--threads 2] [--repeats 5] [--clip clips/clip_0.wav] [--faster-whisper DIR]

Same thread count for every runtime (dreidel.set_num_threads + BLAS/OpenMP environment; onnxruntime
intra_op_num_threads, no spinning), medians of interleaved repeats, in one process, as wall time and as
the process's CPU time (the figure to compare on a shared, loaded machine):

- encoder forward on the clip's features: dreidel ÷ onnxruntime (encoder_model.onnx);
- whole transcription of the clip (WAV → front end → encoder → greedy): dreidel (KV cache) ÷
  onnxruntime running the exported graphs greedily (the decoder graph has no cache: it re-reads the
  prefix each step) and ÷ the ONNX importer's GraphModules doing the same; the baselines use
  dreidel's front end (they have none);
- ms per decoder step with the cache (one clip, after the first step);
- peak RSS of a fresh process that loads the model and transcribes the clip (and RSS after loading);
- optionally faster-whisper (CTranslate2) fp32 and int8 on the same clip, when importable
  (`--faster-whisper` names the CTranslate2 model folder; bench/faster_whisper_model.py builds it
  from the same weights).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_whisper():
    override = os.environ.get("DREIDEL_SHARED")
    return (Path(override) if override else ROOT.parent / "shared") / "onnx" / "whisper-tiny-en"


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip", default="clips/clip_0.wav", help="relative to the export folder")
    parser.add_argument("--faster-whisper", type=Path, default=None, help="CTranslate2 Whisper model folder")
    parser.add_argument("--skip-importer", action="store_true", help="skip the (slow) importer baseline")
    parser.add_argument("--worker", choices=["speed", "rss"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def ort_session(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # interleaved with BLAS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def greedy_graph(run_encoder, run_decoder, features, config):
    """Greedy decoding on graphs without a cache: the whole prefix every step (Whisper's rules)."""
    import numpy as np
    hidden = run_encoder(features)
    tokens = list(config.prompt)
    while len(tokens) < config.max_length:
        scores = np.array(run_decoder(np.array([tokens], np.int64), hidden)[0, -1], copy=True)
        scores[config.suppress_tokens] = -np.inf
        if len(tokens) == len(config.prompt):
            scores[config.begin_suppress_tokens] = -np.inf
        tokens.append(int(scores.argmax()))
        if tokens[-1] == config.eos_token_id:
            break
    return tokens


def timed(fn):
    """(wall seconds, CPU seconds of the whole process, result): CPU time is what to compare on a
    shared machine, where wall time also counts other people's load."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def speed_worker(args):
    import numpy as np
    import dreidel
    sys.path.insert(0, str(ROOT))
    from dreidel.audio import log_mel_spectrogram
    from dreidel.models.whisper import Whisper
    from dreidel.models.whisper.decoding import step_threads

    dreidel.set_num_threads(args.threads)
    folder = shared_whisper()
    clip = str(folder / args.clip)
    model = Whisper.load(folder)
    config = model.config
    encoder, decoder = ort_session(folder / "encoder_model.onnx", args.threads), \
        ort_session(folder / "decoder_model.onnx", args.threads)
    features = log_mel_spectrogram([clip])

    def ort_encode(f):
        return encoder.run(None, {"input_features": f})[0]

    def ort_decode(ids, hidden):
        return decoder.run(None, {"input_ids": ids, "encoder_hidden_states": hidden})[0]

    def dreidel_encode():
        with dreidel.no_grad():
            return model.encode(features).numpy()

    def dreidel_transcribe():
        return model.transcribe(clip)["token_ids"]

    def ort_transcribe():
        return greedy_graph(ort_encode, ort_decode, log_mel_spectrogram([clip]), config)

    runs = {"encoder_dreidel": dreidel_encode, "encoder_ort": lambda: ort_encode(features),
            "transcribe_dreidel": dreidel_transcribe, "transcribe_ort": ort_transcribe}
    if not args.skip_importer:
        from importers.onnx_to_dreidel import load
        graph_encoder, graph_decoder = load(folder / "encoder_model.onnx"), load(folder / "decoder_model.onnx")

        def importer_transcribe():
            with dreidel.no_grad():
                return greedy_graph(lambda f: graph_encoder(f),
                                    lambda ids, h: graph_decoder(input_ids=ids, encoder_hidden_states=h).numpy(),
                                    log_mel_spectrogram([clip]), config)
        runs["transcribe_importer"] = importer_transcribe

    ids = dreidel_transcribe()
    check = {"same_ids_as_ort": ids == ort_transcribe(), "ids": ids,
             "encoder_max_abs_diff": float(np.abs(dreidel_encode() - ort_encode(features)).max())}
    times = {k: [] for k in runs}
    cpu_times = {k: [] for k in runs}
    for repeat in range(args.repeats):  # interleaved, so load changes hit every runtime alike
        for name, fn in runs.items():
            if name == "transcribe_importer" and repeat >= 2:
                continue  # slow; two repeats are enough
            seconds, cpu, out = timed(fn)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            if name.startswith("transcribe"):
                check["same_ids_" + name] = list(out) == ids
    # ms per cached decoder step: one clip, after the prompt step
    with dreidel.no_grad():
        hidden = model.encode(features)
        self_cache, cross_cache = model.new_caches(64)
        model.decode(np.array([config.prompt]), hidden, self_cache, cross_cache, last_only=True)
        steps, step_cpu = [], []
        for token in ids[2:-1]:
            with step_threads(1):  # as greedy() runs its steps
                seconds, cpu, _ = timed(lambda: model.decode(np.array([[token]]), None, self_cache, cross_cache,
                                                             last_only=True))
            steps.append(seconds)
            step_cpu.append(cpu)
        frontend = [timed(lambda: log_mel_spectrogram([clip]))[0] for _ in range(args.repeats)]
        thirty = np.zeros(480000, np.float32)
        frontend30 = [timed(lambda: log_mel_spectrogram(thirty))[0] for _ in range(args.repeats)]
    result = {k: statistics.median(v) for k, v in times.items()}
    result.update({k + "_cpu": statistics.median(v) for k, v in cpu_times.items()})
    result.update(step_ms=1e3 * statistics.median(steps), step_cpu_ms=1e3 * statistics.median(step_cpu),
                  steps=len(steps),
                  frontend_ms=1e3 * statistics.median(frontend), frontend30_ms=1e3 * statistics.median(frontend30),
                  **check)
    if args.faster_whisper:
        result.update(faster_whisper(args, clip))
    print(json.dumps(result))


def faster_whisper(args, clip):
    """faster-whisper on the same clip (greedy, no timestamps, no VAD), fp32 and int8."""
    try:
        from faster_whisper import WhisperModel
    except ImportError as error:
        return {"faster_whisper": f"not importable: {error}"}
    from dreidel.audio import load_audio
    audio = load_audio(clip)
    out = {}
    for compute in ("float32", "int8"):
        model = WhisperModel(str(args.faster_whisper), device="cpu", compute_type=compute,
                             cpu_threads=args.threads, num_workers=1)

        def run():
            segments, _ = model.transcribe(audio, beam_size=1, without_timestamps=True, language="en",
                                           vad_filter=False, condition_on_previous_text=False,
                                           temperature=0.0)
            return " ".join(s.text.strip() for s in segments)
        text = run()
        out[f"faster_whisper_{compute}"] = statistics.median(timed(run)[0] for _ in range(args.repeats))
        out[f"faster_whisper_{compute}_text"] = text
    return out


def rss_worker(args):
    import resource
    import dreidel
    sys.path.insert(0, str(ROOT))
    from dreidel.models.whisper import Whisper
    dreidel.set_num_threads(args.threads)
    folder = shared_whisper()
    model = Whisper.load(folder)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.transcribe(str(folder / args.clip))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_after_load_mib": after_load, "peak_rss_mib": peak}))


def worker(args, kind, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    command = [sys.executable, __file__, "--worker", kind, "--threads", str(args.threads), "--repeats",
               str(args.repeats), "--clip", args.clip, *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    args = parse()
    if args.worker == "speed":
        return speed_worker(args)
    if args.worker == "rss":
        return rss_worker(args)
    extra = ["--skip-importer"] if args.skip_importer else []
    if args.faster_whisper:
        extra += ["--faster-whisper", str(args.faster_whisper)]
    r = worker(args, "speed", extra)
    m = worker(args, "rss")
    print(f"Whisper tiny.en, {args.clip}, {args.threads} threads, medians of {args.repeats} interleaved repeats")
    print("  (wall time; CPU time of the process in brackets, the fairer figure on a loaded machine)")
    print(f"  encoder forward     dreidel {1e3 * r['encoder_dreidel']:8.1f} ms   onnxruntime "
          f"{1e3 * r['encoder_ort']:8.1f} ms   ratio {r['encoder_dreidel'] / r['encoder_ort']:.2f}"
          f" [CPU {1e3 * r['encoder_dreidel_cpu']:.1f} / {1e3 * r['encoder_ort_cpu']:.1f} ms, ratio "
          f"{r['encoder_dreidel_cpu'] / r['encoder_ort_cpu']:.2f}]   (max |Δ| {r['encoder_max_abs_diff']:.1e})")
    print(f"  transcription       dreidel {1e3 * r['transcribe_dreidel']:8.1f} ms   onnxruntime greedy "
          f"{1e3 * r['transcribe_ort']:8.1f} ms   ratio {r['transcribe_dreidel'] / r['transcribe_ort']:.2f}"
          f" [CPU {1e3 * r['transcribe_dreidel_cpu']:.1f} / {1e3 * r['transcribe_ort_cpu']:.1f} ms, ratio "
          f"{r['transcribe_dreidel_cpu'] / r['transcribe_ort_cpu']:.2f}]")
    if "transcribe_importer" in r:
        print(f"                      importer greedy {1e3 * r['transcribe_importer']:8.1f} ms   ratio "
              f"{r['transcribe_dreidel'] / r['transcribe_importer']:.2f}")
    print(f"  decoder step (cache) {r['step_ms']:.2f} ms [CPU {r['step_cpu_ms']:.2f} ms] "
          f"(median of {r['steps']} steps)")
    print(f"  front end           {r['frontend_ms']:.1f} ms for the clip, {r['frontend30_ms']:.1f} ms for 30 s")
    print(f"  peak RSS            {m['peak_rss_mib']:.0f} MiB transcribing one clip "
          f"({m['peak_rss_after_load_mib']:.0f} MiB after loading)")
    same = all(v for k, v in r.items() if k.startswith("same_ids"))
    print(f"  ids identical across runtimes: {same}  {r['ids']}")
    for compute in ("float32", "int8"):
        key = f"faster_whisper_{compute}"
        if key in r:
            print(f"  faster-whisper {compute:<8} {1e3 * r[key]:8.1f} ms   dreidel ÷ it "
                  f"{r['transcribe_dreidel'] / r[key]:.2f}   text {r[key + '_text']!r}")
    if "faster_whisper" in r:
        print(f"  faster-whisper: {r['faster_whisper']}")


if __name__ == "__main__":
    main()
