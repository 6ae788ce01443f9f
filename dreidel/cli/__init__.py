"""The `dreidel` command: one entry point, one subcommand per task.

    dreidel transcribe A.wav [B.wav …] --model DIR
    dreidel generate MODEL.gguf "prompt"
    dreidel recast TEACHER --data CALIB --out DIR
    dreidel evaluate TEACHER STUDENT --data EVAL
    dreidel demo                     (the main job, as `python -m dreidel`)

Each subcommand's module is imported only when it runs, so `dreidel --help` stays fast and a
subcommand's optional dependencies are needed only by it.
"""
import importlib
import sys

# name -> (module, function taking argv, one-line help)
COMMANDS = {
    "transcribe": ("dreidel.cli.transcribe", "main", "speech to text with Whisper (WAV files in)"),
    "generate": ("dreidel.cli.generate", "main", "text generation from a GGUF language model"),
    "recast": ("dreidel.recast.cli", "recast_main", "recast a dense teacher into a faster student"),
    "evaluate": ("dreidel.recast.cli", "evaluate_main", "compare a student with its teacher"),
    "demo": ("dreidel.__main__", "main", "the main job on its embedded default"),
}


def _usage():
    lines = ["usage: dreidel COMMAND [options]   (dreidel COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dreidel: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("dreidel"):
            print(f"dreidel: the {name!r} command is not available in this build ({error})", file=sys.stderr)
            return 2
        raise
    result = getattr(module, function)(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
