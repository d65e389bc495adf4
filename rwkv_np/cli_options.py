"""The command line's shared pieces: its parser and help format, the options several verbs take
(--model, --dtype/--weights/--threads, sampling), their checks, and loading the model they name.
Every verb's module (cli.py, chat.py, golden.py, compare.py, convert.py, server/) builds on these,
so none of them imports another verb's module.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from .errors import InputError


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (the usage is one --help away), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after an option's help, unless the help already says its default or
    there is none to show (None, False, an empty list)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None or action.default is False \
                or action.default == []:
            return action.help
        return super()._get_help_string(action)


# -- shared options ------------------------------------------------------------------------------

def demo_model_dir() -> str | None:
    """The model shipped inside the package (rwkv_np.DEMO_MODEL), or None if it is not there."""
    from . import DEMO_MODEL
    return DEMO_MODEL if os.path.isfile(os.path.join(DEMO_MODEL, "config.json")) else None


def common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the full traceback instead of one line on stderr")
    return p


def model_path_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", metavar="PATH", default=demo_model_dir(),
                   help="model directory (config.json + model.safetensors or pytorch_model.bin, its"
                        " shards, and tokenizer.json unless vocab 256, 50277 or 65536, which rwkv_np"
                        " ships) or a single .safetensors, .pth, pytorch_model.bin or rwkv.cpp .bin"
                        " file; the default is the demo model in rwkv_np/assets/")
    return p


def model_options() -> argparse.ArgumentParser:
    from .storage import STORAGES

    p = argparse.ArgumentParser(add_help=False, parents=[model_path_option()])
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype")
    p.add_argument("--weights", choices=[s for s in STORAGES if s != "float64"], default=None,
                   help="how matrices are kept in memory (default: as in the file); 16-bit and int8"
                        " read half / a quarter of the bytes per token")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads to use (default: all cores)")
    return p


def sampling_options(max_new_tokens: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N", help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="softmax temperature; 0 = greedy (argmax)")
    g.add_argument("--top-p", type=float, default=0.85, metavar="P", help="nucleus sampling mass (1 = off)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the k most likely tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X",
                   help="HF repetition penalty on tokens of the prompt and output (1 = off)")
    g.add_argument("--presence-penalty", type=float, default=0.0, metavar="X",
                   help="subtracted from the logit of every token generated so far (ChatRWKV)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X",
                   help="subtracted per (decayed) occurrence of a generated token (ChatRWKV)")
    g.add_argument("--penalty-decay", type=float, default=0.996, metavar="X",
                   help="occurrence counts are multiplied by this after every token")
    g.add_argument("--ban", type=int, action="append", default=[], metavar="ID",
                   help="token id that is never generated (repeatable)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the output contains TEXT, printed without it; \\n and \\t are"
                        " understood (repeatable)")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (default: fresh entropy)")
    g.add_argument("--prefill-chunk-size", type=int, default=256, metavar="N", help="prompt tokens per model call")
    return p


def unescape(text: str) -> str:
    """'\\n', '\\t' and '\\\\' typed on a command line -> newline, tab, backslash."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def check_model_path(path) -> None:
    if path is None:
        raise InputError("--model: no model given, and no demo model in rwkv_np/assets/")
    if not os.path.exists(path):
        raise InputError(f"--model: {path}: no such file or directory")


def load(args):
    """(model, tokenizer) of --model: any file or directory rwkv_np loads."""
    from .jit_notice import announce_compiles
    from .threads import set_threads
    from .tokenizer import Tokenizer
    from .v4.model import RwkvForCausalLM  # loads any generation's model (from_pretrained dispatches)

    check_model_path(args.model)
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads: expected a number of threads >= 1, got {args.threads}")
    set_threads(args.threads)
    announce_compiles()
    model = RwkvForCausalLM.from_pretrained(args.model, dtype=args.dtype, weights=args.weights)
    return model, Tokenizer.from_pretrained(args.model, vocab_size=model.config.vocab_size)


def check_sampling(args, vocab_size: int | None = None) -> None:
    """Refuse bad sampling flags in the flags' own words (the API would name its parameters);
    --ban against the vocabulary once it is known."""
    finite = lambda x: math.isfinite(x)  # noqa: E731
    for flag, ok, want in (
            ("--max-new-tokens", args.max_new_tokens >= 0, "an integer >= 0"),
            ("--temperature", finite(args.temperature) and args.temperature >= 0, "a number >= 0 (0 = greedy)"),
            ("--top-p", 0 < args.top_p <= 1, "a number in (0, 1]"),
            ("--top-k", args.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("--repetition-penalty", finite(args.repetition_penalty) and args.repetition_penalty > 0, "a number > 0"),
            ("--presence-penalty", finite(args.presence_penalty), "a finite number"),
            ("--frequency-penalty", finite(args.frequency_penalty), "a finite number"),
            ("--penalty-decay", 0 <= args.penalty_decay <= 1, "a number in [0, 1]"),
            ("--prefill-chunk-size", args.prefill_chunk_size >= 1, "an integer >= 1")):
        if not ok:
            raise InputError(f"{flag}: expected {want}, got {getattr(args, flag[2:].replace('-', '_'))}")
    if any(not unescape(s) for s in args.stop):
        raise InputError("--stop: an empty TEXT would stop before the first token")
    for token in args.ban:
        if token < 0:
            raise InputError(f"--ban: expected token ids >= 0, got {token}")
        if vocab_size is not None and token >= vocab_size:
            raise InputError(f"--ban: token id {token} is outside the vocabulary [0, {vocab_size})")


def generation_kwargs(args, vocab_size: int, stops=(), seed=None) -> dict:
    """The API's arguments for the sampling flags (checked); `seed` (a Generator) overrides --seed."""
    check_sampling(args, vocab_size)
    greedy = args.temperature == 0
    return dict(max_new_tokens=args.max_new_tokens, do_sample=not greedy,
                temperature=1.0 if greedy else args.temperature,
                top_k=args.top_k or None, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                penalty_decay=args.penalty_decay, suppress_tokens=args.ban,
                stop_strings=[unescape(s) for s in args.stop] + list(stops),
                seed=args.seed if seed is None else seed, prefill_chunk_size=args.prefill_chunk_size)


def read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: cannot read {path} ({e.strerror if isinstance(e, OSError) else e})") from None


def print_piece(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
