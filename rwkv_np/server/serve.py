"""`rwkv-np serve`: load a model, warm it up, and serve it over HTTP with uvicorn.

    rwkv-np serve --model DIR [--host 127.0.0.1] [--port 8000] [--weights int8] [--threads N]

The model is loaded and its kernels compiled (one prompt, one B = 1 and one B = 2 step) before
the socket is opened, so the line "rwkv-np serve: listening on http://HOST:PORT/v1" means ready
(`--port 0` picks a free port; that line names it). SIGINT / SIGTERM stop taking connections,
let the responses in flight finish (at most --shutdown-timeout seconds, then they are cancelled),
stop the engine and exit 0; a second Ctrl-C exits at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

import numpy as np

from ..errors import InputError


def add_serve(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np serve`; parser_kwargs (parents, formatter_class...) go to add_parser."""
    from ..cli_options import model_options
    parents = [*parser_kwargs.pop("parents", []), model_options()]
    p = subparsers.add_parser(
        "serve", parents=parents, **parser_kwargs, help="an OpenAI-compatible HTTP server (needs rwkv_np[serve])",
        description="Serve the model over HTTP in the OpenAI API's shapes: /v1/completions and "
                    "/v1/chat/completions (streaming or not), /v1/models, /health. Requests decode "
                    "together as rows of one batch, and prompt states are cached by token prefix. "
                    "Needs Starlette and uvicorn: pip install 'rwkv_np[serve]'.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one, printed at start)")
    p.add_argument("--name", default=None, help="the model's id in the API (default: the model's file or"
                                                " directory name)")
    p.add_argument("--cache-mb", type=float, default=256, metavar="MB", help="memory for cached prompt states, MiB (0: off)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N", help="requests decoding at once; more wait their turn")
    p.add_argument("--prefill-chunk", type=int, default=64, metavar="N",
                   help="prompt tokens per model call; the other rows wait for one chunk per token")
    p.add_argument("--max-prompt-tokens", type=int, default=16384, metavar="N",
                   help="longer prompts are refused (413)")
    p.add_argument("--chat-max-tokens", type=int, default=256, metavar="N",
                   help="max_tokens of a chat request that sets none")
    p.add_argument("--shutdown-timeout", type=float, default=30, metavar="S",
                   help="on SIGINT/SIGTERM, seconds given to the responses in flight")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(run=run_serve)


def warm_up(model, tokenizer) -> None:
    """Compile every kernel a request will use: the tokenizer's, a prompt (GEMM path), B = 1 and
    B = 2 steps."""
    from ..generation import decode_one, prefill
    tokenizer.decode(tokenizer.encode("Warm up."))
    _, state = prefill(model, np.zeros((2, 20), dtype=np.int64), chunk_size=20)
    decode_one(model, [0], [s[:1] for s in state])
    decode_one(model, [0, 0], state)


def model_name(path: str) -> str:
    path = os.path.abspath(path).rstrip(os.sep)
    base = os.path.basename(path)
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def run_serve(args) -> int:
    try:
        import uvicorn

        from .app import Limits, create_app
    except ImportError as e:
        raise InputError(f"serve needs Starlette and uvicorn ({e}): pip install 'rwkv_np[serve]'") from None
    from ..cli_options import load
    from .cache import PrefixCache
    from .engine import Engine

    for flag, value, ok in (("--port", args.port, 0 <= args.port < 65536), ("--cache-mb", args.cache_mb, args.cache_mb >= 0),
                            ("--max-batch", args.max_batch, args.max_batch >= 1),
                            ("--prefill-chunk", args.prefill_chunk, args.prefill_chunk >= 1),
                            ("--max-prompt-tokens", args.max_prompt_tokens, args.max_prompt_tokens >= 1),
                            ("--chat-max-tokens", args.chat_max_tokens, args.chat_max_tokens >= 1),
                            ("--shutdown-timeout", args.shutdown_timeout, args.shutdown_timeout >= 0)):
        if not ok:
            raise InputError(f"{flag}: out of range: {value}")
    sock = _listen(args.host, args.port)  # before loading: a taken port fails at once
    model, tokenizer = load(args)
    warm_up(model, tokenizer)
    name = args.name or model_name(args.model)
    engine = Engine(model, PrefixCache(args.cache_mb * 2**20), args.prefill_chunk,
                    cache_every=args.prefill_chunk * max(1, 256 // args.prefill_chunk),
                    max_batch=args.max_batch, threads=args.threads)
    app = create_app(engine, tokenizer, name, Limits(max_prompt_tokens=args.max_prompt_tokens,
                                                     chat_max_tokens=args.chat_max_tokens))
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.shutdown_timeout,
                            lifespan="on")
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"rwkv-np serve: {name} listening on http://{host}:{port}/v1 (Ctrl-C stops)", file=sys.stderr, flush=True)
    _uvicorn_server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus raising the caught SIGINT/SIGTERM again after the graceful shutdown
        (that would end the process with status 130 or 143): a requested stop is a success."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)
