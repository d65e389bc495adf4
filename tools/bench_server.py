"""rwkv-np serve benchmark (issue 18): continuous batching and the prompt-state cache, on the 169M
shape with random weights (tools/bench.py's), driven by the official openai client over loopback.

    python tools/bench_server.py                  # both parts
    python tools/bench_server.py batch --clients 8 --tokens 128
    python tools/bench_server.py cache --system-tokens 1000 --questions 4
    python tools/bench_server.py stall --system-tokens 1000 --tokens 128

batch   each client's prompt alone (one after another), then all clients at once, streaming and
        greedy; aggregate tokens/s together vs alone (target >= 4x for 8 clients) and every
        client's text together == its text alone. The server runs with --cache-mb 0, so neither
        pass is helped by the other's cached prompts; the passes alternate for --rounds rounds
        and the best of each is kept.
stall   (only when asked) 4 streams decode while a ~1,000-token prompt arrives: their longest
        gap between tokens vs the newcomer's whole prefill (chunked, so one chunk per token).
cache   a system prompt of ~1,000 tokens, then short questions as chat requests: time to first
        token (first content chunk of the stream) on a server without cache (--cache-mb 0) vs one
        whose cache holds the system prompt (one earlier request with another question); target
        <= 0.1x; the answers must be identical.

Each server runs in its own process (`python -m rwkv_np serve`), one at a time. The machines are
shared and noisy: read the ratios. The random model's vocabulary is GPT-NeoX's (50277): its
tokenizer.json comes from ../shared/data/20B_tokenizer.json when there, else rwkv_np's own.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
SHARED_TOKENIZER = os.path.join(REPO, "..", "shared", "data", "20B_tokenizer.json")

PROMPTS = ["The history of the city begins", "In the morning the fishermen", "A recipe for bread needs",
           "The theory of relativity says", "Our company was founded in", "Dear Sir, I write to you about",
           "The first rule of chess is", "When the rain stopped, the children", "The old lighthouse keeper",
           "Scientists have discovered that", "Once upon a time in a kingdom", "The river flows to the sea and"]
QUESTIONS = ["What is the main topic?", "Who wrote this?", "Summarize it in one line.", "Is it true?",
             "What happens next?", "Why does it matter?", "Where does it take place?", "When was it written?"]


class Server:
    """`rwkv-np serve --port 0` in a subprocess; ready when it prints the address it listens on."""

    def __init__(self, model_dir, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "rwkv_np", "serve", "--model", model_dir, "--port", "0",
                                      "--log-level", "warning", *args], stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=REPO))
        for line in self.proc.stderr:
            match = re.search(r"listening on (http://\S+/v1)", line)
            if match:
                self.base_url = match.group(1)
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        import openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id

    def health(self) -> dict:
        import httpx
        return httpx.get(self.base_url[:-len("/v1")] + "/health", timeout=60).json()

    def close(self):
        self.proc.terminate()
        self.proc.wait(120)


def stream(server, times=None, **kwargs):
    """One streamed request -> (text, completion tokens, seconds to the first text, seconds in all);
    `times` (a list) gets the arrival time of every text chunk."""
    t0 = time.perf_counter()
    chat = "messages" in kwargs
    create = server.client.chat.completions.create if chat else server.client.completions.create
    pieces, first, tokens = [], None, 0
    for chunk in create(model=server.model, temperature=0, stream=True, stream_options={"include_usage": True},
                        **kwargs):
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            if piece or choice.finish_reason:
                first = first or time.perf_counter() - t0
            if piece and times is not None:
                times.append(time.perf_counter())
            pieces.append(piece or "")
    return "".join(pieces), tokens, first, time.perf_counter() - t0


def bench_batch(model_dir, clients: int, tokens: int, rounds: int, server_args=()) -> dict:
    """Alone (the clients one after another) and together (all at once), alternating for `rounds`
    rounds; the best round of each is kept, as tools/bench.py does."""
    server = Server(model_dir, "--cache-mb", "0", "--max-batch", str(max(clients, 1)), *server_args)
    prompts = (PROMPTS * clients)[:clients]
    best = {"alone": (0.0, None, None), "together": (0.0, None, None)}  # tokens/s, seconds, results
    model_rate = {"alone": 0.0, "together": 0.0}  # tokens / seconds inside model calls (engine counters)

    def counted(name, before):
        after = server.health()
        seconds = sum(after[k] - before[k] for k in ("decode_seconds", "prefill_seconds"))
        model_rate[name] = max(model_rate[name], (after["generated_tokens"] - before["generated_tokens"]) / seconds)

    try:
        stream(server, prompt="Warm up", max_tokens=4)
        for _ in range(rounds):
            t, before = time.perf_counter(), server.health()
            alone = [stream(server, prompt=p, max_tokens=tokens) for p in prompts]
            seconds = time.perf_counter() - t
            counted("alone", before)
            best["alone"] = max(best["alone"], (sum(r[1] for r in alone) / seconds, seconds, alone), key=lambda b: b[0])
            together = [None] * clients

            def run(i, out):
                out[i] = stream(server, prompt=prompts[i], max_tokens=tokens)
            threads = [threading.Thread(target=run, args=(i, together)) for i in range(clients)]
            t, before = time.perf_counter(), server.health()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            seconds = time.perf_counter() - t
            counted("together", before)
            best["together"] = max(best["together"], (sum(r[1] for r in together) / seconds, seconds, together),
                                   key=lambda b: b[0])
    finally:
        server.close()
    (alone_rate, alone_s, alone), (together_rate, together_s, together) = best["alone"], best["together"]
    return {"clients": clients, "tokens_per_client": tokens, "rounds": rounds,
            "alone_tokens_per_s": alone_rate, "together_tokens_per_s": together_rate,
            "alone_s": alone_s, "together_s": together_s, "speedup": together_rate / alone_rate,
            "model_only_speedup": model_rate["together"] / model_rate["alone"],
            "texts_identical": [a[0] == b[0] for a, b in zip(alone, together)]}


def system_prompt(model_dir, n_tokens: int) -> str:
    from rwkv_np import Tokenizer
    tokenizer = Tokenizer.from_pretrained(model_dir)
    sentences = ["You are a helpful assistant for the city library of Verona.",
                 "The library opens at nine in the morning and closes at six in the evening.",
                 "Members may borrow up to twelve books for three weeks at a time.",
                 "The reading room on the second floor holds the manuscripts of the fifteenth century.",
                 "Answer every question politely, briefly and truthfully; say so when you do not know."]
    text, i = "", 0
    while len(tokenizer.encode(text)) < n_tokens:
        text += sentences[i % len(sentences)] + " "
        i += 1
    return text.strip()


def bench_cache(model_dir, system_tokens: int, questions: int, tokens: int, server_args=()) -> dict:
    system = system_prompt(model_dir, system_tokens)
    asks = (QUESTIONS * questions)[:questions]
    chat = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]
    runs = {}
    for name, args in (("uncached", ["--cache-mb", "0"]), ("cached", [])):
        server = Server(model_dir, *args, *server_args)
        try:
            stream(server, messages=chat("Hello."), max_tokens=2)   # cached: the system prompt is in now
            runs[name] = [stream(server, messages=chat(q), max_tokens=tokens) for q in asks]
        finally:
            server.close()
    ttft = {name: sorted(r[2] for r in rs) for name, rs in runs.items()}
    median = {name: v[len(v) // 2] for name, v in ttft.items()}
    return {"system_tokens": system_tokens, "questions": questions, "ttft_uncached_s": ttft["uncached"],
            "ttft_cached_s": ttft["cached"], "ratio": median["cached"] / median["uncached"],
            "answers_identical": [a[0] == b[0] for a, b in zip(runs["uncached"], runs["cached"])]}


def bench_stall(model_dir, prompt_tokens: int, clients: int, tokens: int, server_args=()) -> dict:
    """`clients` streams decode; a prompt of `prompt_tokens` arrives meanwhile. Its prefill goes in
    chunks between their steps: their longest wait for a token vs the whole prefill (its TTFT)."""
    import numpy as np
    server = Server(model_dir, "--cache-mb", "0", *server_args)
    try:
        stream(server, prompt="Warm up", max_tokens=4)
        times = [[] for _ in range(clients)]
        threads = [threading.Thread(target=stream, args=(server, times[i]),
                                    kwargs={"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens})
                   for i in range(clients)]
        for th in threads:
            th.start()
        while min(len(t) for t in times) < 5:
            time.sleep(0.01)
        long = stream(server, prompt=system_prompt(model_dir, prompt_tokens), max_tokens=4)
        for th in threads:
            th.join()
    finally:
        server.close()
    gaps = np.concatenate([np.diff(t) for t in times])
    return {"clients": clients, "prompt_tokens": prompt_tokens, "newcomer_ttft_s": long[2],
            "median_gap_s": float(np.median(gaps)), "max_gap_s": float(gaps.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", choices=["batch", "cache", "stall", "both"], default="both",
                   help="both: batch and cache")
    p.add_argument("--model", help="a model directory (default: random 169M-shape weights in a temporary dir)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128, help="tokens per client (batch)")
    p.add_argument("--rounds", type=int, default=2, help="alone/together rounds; the best of each is kept (batch)")
    p.add_argument("--threads", type=int, help="the server's --threads (default: all cores)")
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    tmp = None
    try:
        model_dir = args.model
        if model_dir is None:
            from bench import random_model_dir
            model_dir = tmp = tempfile.mkdtemp(prefix="rwkv169m-")
            random_model_dir("169m", model_dir)
            if os.path.isfile(SHARED_TOKENIZER):
                shutil.copy(SHARED_TOKENIZER, os.path.join(model_dir, "tokenizer.json"))
        results, server_args = {}, [] if args.threads is None else ["--threads", str(args.threads)]
        if args.part in ("batch", "both"):
            r = results["batch"] = bench_batch(model_dir, args.clients, args.tokens, args.rounds, server_args)
            print(f"batch: {r['clients']} clients x {r['tokens_per_client']} tokens: alone "
                  f"{r['alone_tokens_per_s']:.1f} tokens/s ({r['alone_s']:.1f} s), together "
                  f"{r['together_tokens_per_s']:.1f} tokens/s ({r['together_s']:.1f} s): {r['speedup']:.2f}x "
                  f"(time inside model calls only: {r['model_only_speedup']:.2f}x); "
                  f"texts identical: {sum(r['texts_identical'])}/{r['clients']}", flush=True)
        if args.part in ("cache", "both"):
            r = results["cache"] = bench_cache(model_dir, args.system_tokens, args.questions, args.answer_tokens,
                                                       server_args)
            fmt = lambda v: ", ".join(f"{x * 1000:.0f}" for x in v)
            print(f"cache: {r['system_tokens']}-token system prompt, {r['questions']} questions: time to first token"
                  f" uncached [{fmt(r['ttft_uncached_s'])}] ms, cached [{fmt(r['ttft_cached_s'])}] ms: median ratio"
                  f" {r['ratio']:.3f}; answers identical: {sum(r['answers_identical'])}/{r['questions']}", flush=True)
        if args.part == "stall":
            r = results["stall"] = bench_stall(model_dir, args.system_tokens, 4, args.tokens, server_args)
            print(f"stall: {r['clients']} streams decoding while a {r['prompt_tokens']}-token prompt is prefilled"
                  f" ({r['newcomer_ttft_s']:.1f} s to its first token): their gaps between tokens median"
                  f" {r['median_gap_s'] * 1000:.0f} ms, longest {r['max_gap_s'] * 1000:.0f} ms", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
