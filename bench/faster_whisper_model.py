"""Build the CTranslate2 model folder that `bench/whisper.py --faster-whisper DIR` compares against,
from the same Whisper tiny.en weights dreidel loads (no download).

    python bench/faster_whisper_model.py [--out /tmp/ct2-whisper-tiny-en]

Needs torch, transformers and faster-whisper (ctranslate2) installed — benchmark-only tools, never
used by dreidel or its tests. The weights are dreidel's own (`Whisper.load` on the ONNX export, Hugging
Face names), loaded into transformers' `WhisperForConditionalGeneration`, saved, then converted with
`ct2-transformers-converter`.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dreidel.models.whisper import Whisper  # noqa: E402

SOURCE = Path(os.environ.get("DREIDEL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "onnx/whisper-tiny-en"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/ct2-whisper-tiny-en"))
    args = p.parse_args()
    import torch
    import transformers
    model = Whisper.load(SOURCE)
    state = {k if k.startswith("model.") else "model." + k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in model.state_dict().items()}
    hf = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig.from_pretrained(SOURCE)).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if [k for k in missing if k != "proj_out.weight"] or unexpected:  # proj_out is tied to the embedding
        sys.exit(f"weights do not fit transformers' Whisper: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        for name in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
            shutil.copy(SOURCE / name, Path(folder) / name)
        subprocess.run(["ct2-transformers-converter", "--model", folder, "--output_dir", str(args.out),
                        "--copy_files", "tokenizer.json", "preprocessor_config.json", "--force"], check=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
