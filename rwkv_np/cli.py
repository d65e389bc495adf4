"""rwkv-np: generate, chat, score and inspect RWKV models from the command line.

    rwkv-np generate "Once upon a time" --max-new-tokens 50 --seed 1
    echo "Hello" | rwkv-np generate --temperature 0          # prompt from stdin, greedy
    printf 'Hi!\\nWhat did I say?\\n' | rwkv-np chat          # one turn per line; state carried
    rwkv-np score text.txt                                    # perplexity, nats/char, bits/byte
    rwkv-np info --model path/to/model

`--model` defaults to the demo model shipped in rwkv_np/assets/. Any rwkv_np error ends the
program with one line on stderr and exit status 2 (`--debug` shows the traceback instead).

Adding a subcommand: write `add_<name>(subparsers)`, which builds its parser and sets
`run=<function(args) -> exit status>`, and list it in COMMANDS.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import InputError, RwkvError


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


# -- generate ------------------------------------------------------------------------------------

def add_generate(sub):
    p = sub.add_parser("generate", help="continue a prompt", formatter_class=Formatter,
                       parents=[common_options(), model_options(), sampling_options(200)],
                       description="Continue PROMPT (or standard input) and print the new text as it is"
                                   " generated. The prompt itself is not printed.")
    p.add_argument("prompt", nargs="?", default="-", help="prompt text; '-' reads standard input")
    p.add_argument("--no-stream", action="store_true", help="print the text once, at the end")
    p.add_argument("--load-state", metavar="FILE", help="start from a state saved by --save-state or chat's /save")
    p.add_argument("--save-state", metavar="FILE", help="save the state after the generated text")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from .files import check_writable
    from .generation import TextStream
    from .state_file import load_state, save_state

    check_sampling(args)
    if args.save_state:  # now, not after the whole generation has run
        check_writable(args.save_state, "--save-state")
    if args.prompt == "-" and sys.stdin.isatty():
        print("reading the prompt from the terminal; end it with Ctrl-D (or give PROMPT as an argument)",
              file=sys.stderr)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise InputError("prompt: empty (give it as an argument or on standard input)")
    model, tokenizer = load(args)
    state = [s for s in load_state(args.load_state, model)] if args.load_state else None
    stream = TextStream(model, tokenizer, prompt, state=state, **generation_kwargs(args, model.config.vocab_size))
    for piece in stream:
        if not args.no_stream:
            print_piece(piece)
    print_piece((stream.text if args.no_stream else "") + "\n")
    if args.save_state:
        save_state(args.save_state, stream.output.state, model, {"tokens": str(len(stream.output.new_tokens[0]))})
    return 0


# -- chat (chat.py) -----------------------------------------------------------------------------

def add_chat(sub):
    from .chat import add_chat
    add_chat(sub)


# -- score ---------------------------------------------------------------------------------------

def add_score(sub):
    p = sub.add_parser("score", help="perplexity and bits per byte of a text file", formatter_class=Formatter,
                       parents=[common_options(), model_options()],
                       description="Feed FILE through the model in chunks carried by the state and report how"
                                   " well each token is predicted from the ones before it (the first token"
                                   " is not scored). Prints nats/token, perplexity, nats/char and bits/byte.")
    p.add_argument("file", help="UTF-8 text file; '-' reads standard input")
    p.add_argument("--chunk-size", type=int, default=256, metavar="N", help="tokens per model call")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N", help="score only the first N tokens (0 = all)")
    p.set_defaults(run=run_score)


def run_score(args) -> int:
    import numpy as np
    from tqdm import tqdm

    if args.chunk_size < 1:
        raise InputError(f"--chunk-size: must be >= 1, got {args.chunk_size}")
    if args.max_tokens < 0:
        raise InputError(f"--max-tokens: must be >= 0 (0 = all), got {args.max_tokens}")
    text = read_text(args.file, "file")
    model, tokenizer = load(args)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if args.max_tokens > 0:
        ids = ids[:args.max_tokens]
    if len(ids) < 2:
        raise InputError(f"file: {args.file} has {len(ids)} token(s); scoring needs at least 2")
    nll, state = 0.0, None
    with tqdm(total=len(ids) - 1, unit="tok", desc="score", file=sys.stderr) as bar:
        for start in range(0, len(ids) - 1, args.chunk_size):
            chunk = ids[start:start + args.chunk_size]
            targets = ids[start + 1:start + 1 + len(chunk)]       # the next token of each position
            out = model(chunk[None], state=state, use_cache=True)
            state = out.state
            z = out.logits[0, :len(targets)].astype(np.float64)   # (T, V)
            m = z.max(axis=-1)
            log_z = m + np.log(np.exp(z - m[:, None]).sum(axis=-1))
            nll += float((log_z - z[np.arange(len(targets)), targets]).sum())
            bar.update(len(targets))
    scored = tokenizer.decode_bytes(ids[1:])
    tokens, chars, nbytes = len(ids) - 1, len(scored.decode("utf-8", errors="replace")), len(scored)
    print(f"{tokens} tokens, {chars} chars, {nbytes} bytes scored ({args.file})")
    print(f"{nll / tokens:.6f} nats/token")
    print(f"{math.exp(nll / tokens):.4f} perplexity")
    print(f"{nll / chars:.6f} nats/char")
    print(f"{nll / nbytes / math.log(2):.6f} bits/byte")
    return 0


# -- info ----------------------------------------------------------------------------------------

def add_info(sub):
    p = sub.add_parser("info", help="config, parameter count, dtypes and size of a model",
                       formatter_class=Formatter, parents=[common_options(), model_path_option()],
                       description="Describe a model without running it. Every tensor's name and shape is"
                                   " checked against the config (exit 2 with the loader's message if one is"
                                   " missing or mis-shaped); --check also reads every value.")
    p.add_argument("--check", action="store_true",
                   help="also read all the weights and refuse NaN or infinite values (reads the whole file)")
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    from collections import Counter

    import numpy as np

    from .load import load
    from .storage import Bfloat16
    from .tokenizer import ByteTokenizer, Tokenizer

    check_model_path(args.model)
    # names and shapes checked against the config; values only with --check (reads every byte)
    gen, config, tensors = load(args.model, allow_nonfinite=not args.check)
    dtypes = Counter("bfloat16" if isinstance(x, Bfloat16) else str(x.dtype) for x in tensors.values())
    if os.path.isdir(args.model):
        files = [f for f in os.listdir(args.model) if f.endswith((".safetensors", ".bin")) and "model" in f]
        size = sum(os.path.getsize(os.path.join(args.model, f)) for f in files)
    else:
        files, size = [os.path.basename(args.model)], os.path.getsize(args.model)
    try:
        tok = Tokenizer.from_pretrained(args.model, vocab_size=config.vocab_size)
        tokenizer = "bytes (vocab 256)" if isinstance(tok, ByteTokenizer) else f"{tok.source} (vocab {tok.vocab_size})"
    except RwkvError as e:
        tokenizer = f"none: {e}"
    print(f"model       {os.path.abspath(args.model)} ({gen.title})")
    print(f"parameters  {sum(int(np.prod(x.shape)) for x in tensors.values()):,} in {len(tensors)} tensors")
    print(f"dtypes      {', '.join(f'{k} x{v}' for k, v in sorted(dtypes.items()))} (on disk)")
    print(f"file size   {size / 2**20:.2f} MiB ({', '.join(sorted(files))})")
    print(f"tokenizer   {tokenizer}")
    print("config.json " + json.dumps({k: v for k, v in config.to_dict().items() if k not in config.extra}))
    if args.check:
        print("check       every tensor present, of its shape, and finite")
    return 0


# -- golden, compare, convert (defined in golden.py, compare.py, convert.py) ----------------------

def add_interop(sub):
    from .compare import add_compare
    from .convert import add_convert, add_quantize
    from .golden import add_golden
    from .server.serve import add_serve
    for add in (add_golden, add_compare, add_convert, add_quantize, add_serve):
        add(sub, formatter_class=Formatter, parents=[common_options()])


# -- entry point ---------------------------------------------------------------------------------

COMMANDS = [add_generate, add_chat, add_score, add_info, add_interop]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="rwkv-np", formatter_class=Formatter,
                    description="CPU-only RWKV language models on NumPy and Numba.",
                    epilog="Run 'rwkv-np COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"rwkv-np {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = None
    try:  # building the parser imports numpy and numba: a Ctrl-C then must not print a traceback
        args = build_parser().parse_args(argv)
        return args.run(args)
    except RwkvError as e:
        if args.debug:
            raise
        print(f"rwkv-np {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args is not None and args.debug:
            raise
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `rwkv-np generate ... | head`
        sys.stderr.close()
        return 0
