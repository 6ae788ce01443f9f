"""Whisper speech recognition in dreidel: `Whisper.load(folder).transcribe(["a.wav"])`.

`folder` is an `optimum` ONNX export (encoder_model.onnx + decoder_model.onnx + config.json) or a
checkpoint written by `save_pretrained` (config.json + model.safetensors, Hugging Face names).
"""
from .config import WhisperConfig
from .model import Whisper, WeightMappingError, sinusoids

__all__ = ["Whisper", "WhisperConfig", "WeightMappingError", "sinusoids"]
