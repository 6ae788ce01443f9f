"""Llama's configuration, with Hugging Face `config.json` field names."""
import dataclasses
import json
from pathlib import Path

__all__ = ["LlamaConfig"]


@dataclasses.dataclass
class LlamaConfig:
    """Architecture of a Llama-family decoder (defaults: SmolLM2-135M). `head_dim=None` means
    hidden_size // num_attention_heads; `num_key_value_heads=None` means plain multi-head attention;
    `chat_template` is the Jinja string of instruct models (None for base models)."""
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = None
    max_position_embeddings: int = 8192
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    attention_bias: bool = False
    chat_template: str = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"LlamaConfig: hidden_size={self.hidden_size} is not divisible by "
                                 f"num_attention_heads={self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig: {name}={value!r} must be a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"LlamaConfig: num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even for rotary embeddings")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig: rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} "
                             "must be positive")

    @classmethod
    def from_dict(cls, values):
        """Build from a dict, ignoring keys that are not fields (HF configs carry many); None stays
        None (a model without BOS/EOS). A list `eos_token_id` (HF allows several) keeps its first."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        # as in Hugging Face: absent kv heads mean multi-head attention, absent head_dim is derived
        values.setdefault("num_key_value_heads", None)
        values.setdefault("head_dim", None)
        if isinstance(values.get("eos_token_id"), (list, tuple)):
            values["eos_token_id"] = values["eos_token_id"][0] if values["eos_token_id"] else None
        return cls(**values)

    @classmethod
    def from_json(cls, path):
        """Read a Hugging Face `config.json` (model_type must be llama when given)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read a Llama config.json ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: config.json is not a JSON object")
        if values.get("model_type", "llama") != "llama":
            raise ValueError(f"{path}: model_type {values.get('model_type')!r} is not llama")
        return cls.from_dict(values)

    def to_dict(self):
        return {"model_type": "llama", **dataclasses.asdict(self)}

    def to_json(self, path):
        """Write `config.json` atomically (temporary file + rename)."""
        import os
        import tempfile
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
