"""Whisper's configuration: the architecture (Hugging Face `config.json` fields) and the decoding
rules (`generation_config.json` fields)."""
import dataclasses
import json
from pathlib import Path

__all__ = ["WhisperConfig"]


@dataclasses.dataclass
class WhisperConfig:
    """Architecture and decoding settings of a Whisper model, with Hugging Face's field names."""
    vocab_size: int = 51864
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    activation_function: str = "gelu"
    scale_embedding: bool = False
    decoder_start_token_id: int = 50257
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    # decoding rules (generation_config.json)
    no_timestamps_token_id: int = 50362
    suppress_tokens: list = dataclasses.field(default_factory=list)
    begin_suppress_tokens: list = dataclasses.field(default_factory=lambda: [220, 50256])
    max_length: int = 448

    def __post_init__(self):
        if self.activation_function not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"WhisperConfig: unsupported activation_function {self.activation_function!r}")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"WhisperConfig: d_model={self.d_model} is not divisible by {name}={getattr(self, name)}")
        if self.scale_embedding:
            raise ValueError("WhisperConfig: scale_embedding=True is not supported (no Whisper checkpoint uses it)")

    @classmethod
    def from_dict(cls, values):
        """Build from a dict, ignoring keys that are not fields (HF configs carry many)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def from_json(cls, path, generation_path=None):
        """Read `config.json`; `generation_config.json` beside it (or at `generation_path`) adds the
        decoding rules when present."""
        path = Path(path)
        values = _read_json(path)
        if values.get("model_type", "whisper") != "whisper":
            raise ValueError(f"{path}: model_type {values.get('model_type')!r} is not whisper")
        generation = Path(generation_path) if generation_path else path.with_name("generation_config.json")
        if generation.is_file():
            values.update({k: v for k, v in _read_json(generation).items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self):
        return {"model_type": "whisper", **dataclasses.asdict(self)}

    def save(self, folder):
        """Write `config.json` (architecture and decoding rules) into `folder`, atomically."""
        write_atomic(Path(folder) / "config.json", json.dumps(self.to_dict(), indent=2).encode())

    @property
    def prompt(self):
        """Decoder prompt ids: <|startoftranscript|> <|notimestamps|>."""
        return [self.decoder_start_token_id, self.no_timestamps_token_id]


def write_atomic(path, payload):
    """Write bytes to `path` through a temporary file and a rename (never a half-written file)."""
    import os
    import tempfile
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _read_json(path):
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read JSON config ({err})") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: config is not a JSON object")
    return values
