"""`rwkv-np serve`: an OpenAI-compatible HTTP server with continuous batching and a prompt-state cache.

    serve.py     `rwkv-np serve`: load the model, run uvicorn, finish in-flight work on SIGINT/SIGTERM
    app.py       the ASGI app (Starlette): routes, server-sent events, client disconnects
    protocol.py  the OpenAI API's shapes: request validation (OpenAI-style errors), chat prompts,
                 response and chunk bodies
    engine.py    the one thread that owns the model: chunked prefill and B > 1 decode steps
    request.py   one request inside the engine: sampling, stop strings, its text and usage
    cache.py     prompt states by token prefix, LRU bounded in bytes

Starlette and uvicorn come with the `serve` extra (`pip install "rwkv_np[serve]"`); nothing here
is imported by `import rwkv_np`, and this file imports nothing.
"""
