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

from .cli_options import (Parser, Formatter, common_options, model_path_option, model_options,
                          sampling_options, check_model_path, load, check_sampling,
                          generation_kwargs, read_text, print_piece)
from .errors import InputError, RwkvError


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
