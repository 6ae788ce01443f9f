"""`dreidel generate MODEL.gguf "prompt"`: stream a Llama-family model's continuation to the terminal
and report prefill and decode speed (tokens/s) on stderr.

    dreidel generate SmolLM2-135M-Instruct.Q4_1.gguf "What is gravity?" --chat --max-new-tokens 64
"""
import argparse
import sys
import time

__all__ = ["main", "StreamDecoder"]


class StreamDecoder:
    """Turns a growing list of token ids into text deltas. A multi-byte character split across
    tokens is held back until complete (its partial bytes would decode to U+FFFD)."""

    def __init__(self, tokenizer, skip_special_tokens=True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids, self.emitted = [], 0

    def push(self, token):
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        stable = len(text.rstrip("\ufffd"))
        delta, self.emitted = text[self.emitted:stable], max(self.emitted, stable)
        return delta

    def flush(self):
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        delta, self.emitted = text[self.emitted:], len(text)
        return delta


def _parser():
    p = argparse.ArgumentParser(prog="dreidel generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a Llama-family GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    p.add_argument("prompt", help="the prompt text (with --chat: the user's message)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="with --chat: a system message")
    p.add_argument("--threads", type=int, default=None, help="threads for BLAS and the kernels")
    return p


def build_prompt(model, prompt, chat=False, system=None):
    """(token ids, stop token ids) for a raw prompt or, with `chat`, a one-turn conversation."""
    tokenizer = model.tokenizer
    stops = {model.config.eos_token_id} - {None}
    if not chat:
        return tokenizer.encode(prompt), stops
    from dreidel.models.llama.chat import render_chat
    if not model.config.chat_template:
        raise ValueError("--chat: this model file has no tokenizer.chat_template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = render_chat(model.config.chat_template, messages, add_generation_prompt=True)
    for end in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        try:
            stops.add(tokenizer.token_to_id(end))
        except KeyError:
            pass
    return tokenizer.encode(text), stops


def main(argv=None):
    args = _parser().parse_args(argv)
    import dreidel
    from importers.gguf_to_dreidel import load_llama
    if args.threads is not None:
        dreidel.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        model = load_llama(args.model)
        ids, stops = build_prompt(model, args.prompt, args.chat, args.system)
    except (OSError, ValueError) as error:
        print(f"dreidel generate: {error}", file=sys.stderr)
        return 1
    print(f"[loaded {args.model} in {time.perf_counter() - start:.1f} s; prompt {len(ids)} tokens]", file=sys.stderr)
    stream = StreamDecoder(model.tokenizer)

    def show(token):
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()

    if not args.chat:
        sys.stdout.write(args.prompt)
    try:
        result = model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                stop_tokens=stops, seed=args.seed, callback=show)
    except ValueError as error:
        print(f"\ndreidel generate: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(stream.flush() + "\n")
    decoded = max(len(result.tokens) - 1, 0)
    print(f"[prefill: {result.prompt_length} tokens, {result.prefill_tokens_per_second:.1f} tokens/s; "
          f"decode: {decoded} tokens, {result.decode_tokens_per_second:.1f} tokens/s; "
          f"stopped: {result.stop_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
