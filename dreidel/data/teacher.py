"""The embedded teacher of the main job: a small vision transformer trained by dreidel on the
digits set that ships in the package (reproduce it with `examples/train_embedded_teacher.py`).

    teacher = load_teacher()                   # DigitsTransformer, eval mode, float32
    logits = teacher(dreidel.tensor(pixels))   # pixels [N, 64] in [0, 1] (or [N, 8, 8]) -> [N, 10]

The 8×8 image is cut into 16 patches of 2×2 pixels; each patch is a token. Pre-norm encoder
blocks (`encoder.layers.N`) with Whisper/BART layer names: `self_attn` (q/k/v/out_proj),
`self_attn_layer_norm`, `fc1`, `fc2`, `final_layer_norm`; then `encoder.layer_norm`, mean pooling
over the tokens and `classifier`. Saved as `digits_teacher.safetensors` (weights stored float16,
computed float32) beside `digits_teacher.json` (the constructor's arguments).
"""
import json
from importlib import resources

import numpy as np

import dreidel
from dreidel import functional as F
from dreidel import nn

TEACHER_NAME = "digits_teacher"


class EncoderBlock(nn.Module):
    """x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, hidden_size, num_heads, intermediate_size, rng=None):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.self_attn = nn.MultiHeadAttention(hidden_size, num_heads, rng=rng)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, intermediate_size, rng=rng)
        self.fc2 = nn.Linear(intermediate_size, hidden_size, rng=rng)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class Encoder(nn.Module):
    def __init__(self, hidden_size, num_layers, num_heads, intermediate_size, rng=None):
        super().__init__()
        self.layers = nn.ModuleList([EncoderBlock(hidden_size, num_heads, intermediate_size, rng)
                                     for _ in range(num_layers)])
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class DigitsTransformer(nn.Module):
    """A vision transformer for 8×8 gray images: patches → encoder blocks → mean pool → classes."""

    def __init__(self, image_size=8, patch_size=2, hidden_size=192, num_layers=3, num_heads=6,
                 intermediate_size=768, num_labels=10, seed=0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        rng = np.random.default_rng(seed)
        self.config = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                           num_layers=num_layers, num_heads=num_heads, intermediate_size=intermediate_size,
                           num_labels=num_labels)
        self.image_size, self.patch_size = image_size, patch_size
        tokens = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Linear(patch_size * patch_size, hidden_size, rng=rng)
        self.position_embedding = nn.Parameter(0.02 * rng.standard_normal((tokens, hidden_size)).astype(np.float32))
        self.encoder = Encoder(hidden_size, num_layers, num_heads, intermediate_size, rng)
        self.classifier = nn.Linear(hidden_size, num_labels, rng=rng)

    def patches(self, pixels):
        """[N, 64] or [N, 8, 8] (or [N, 1, 8, 8]) pixels → [N, tokens, patch²] patches (numpy)."""
        pixels = np.asarray(pixels.data if isinstance(pixels, dreidel.Tensor) else pixels, dtype=np.float32)
        side, p = self.image_size, self.patch_size
        if pixels.ndim < 2 or pixels[0].size != side * side:
            raise ValueError(f"DigitsTransformer expects [N, {side * side}] or [N, {side}, {side}] pixels, "
                             f"got shape {pixels.shape}")
        grid = pixels.reshape(len(pixels), side // p, p, side // p, p).transpose(0, 1, 3, 2, 4)
        return np.ascontiguousarray(grid.reshape(len(pixels), -1, p * p))

    def forward(self, pixel_values):
        x = self.patch_embedding(dreidel.Tensor(self.patches(pixel_values))) + self.position_embedding
        return self.classifier(self.encoder(x).mean(axis=1))


def save_teacher(model, folder, name=TEACHER_NAME):
    """Write `name.safetensors` (float16 weights) and `name.json` (the config) into `folder`."""
    from dreidel.serialization import atomic_write_bytes
    import os
    state = {k: np.asarray(v.data if isinstance(v, dreidel.Tensor) else v).astype(np.float16)
             for k, v in model.state_dict().items()}
    dreidel.save(state, os.path.join(folder, name + ".safetensors"), metadata={"format": "dreidel-teacher"})
    payload = {"class": "dreidel.data.teacher.DigitsTransformer", "config": model.config}
    atomic_write_bytes(os.path.join(folder, name + ".json"), json.dumps(payload, indent=2).encode())


def load_teacher(name=TEACHER_NAME):
    """The teacher that ships in the package, in eval mode with float32 weights."""
    files = resources.files(__name__.rsplit(".", 1)[0])
    with files.joinpath(name + ".json").open("r") as f:
        payload = json.load(f)
    model = DigitsTransformer(**payload["config"])
    with resources.as_file(files.joinpath(name + ".safetensors")) as path:
        state = dreidel.load(path)
    model.load_state_dict({k: np.asarray(v.data if isinstance(v, dreidel.Tensor) else v, dtype=np.float32)
                           for k, v in state.items()})
    return model.eval()
