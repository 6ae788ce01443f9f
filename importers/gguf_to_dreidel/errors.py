"""The GGUF importer's exceptions: one hierarchy under `GGUFError` (a ValueError)."""


class GGUFError(ValueError):
    """Anything the GGUF importer refuses; the message names the file."""


class GGUFFormatError(GGUFError):
    """The file is not a well-formed GGUF file (bad magic, truncated, absurd counts, bad offsets...)."""


class GGUFUnsupportedError(GGUFError):
    """A well-formed file using features we do not implement; `.problems` lists every one of them."""

    def __init__(self, label, problems):
        self.problems = list(problems)
        super().__init__(f"{label}: {len(self.problems)} unsupported feature(s):\n"
                         + "\n".join(f"  {p}" for p in self.problems))
