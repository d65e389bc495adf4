"""A bounded load test of rwkv-np serve on loopback (the demo model, seconds): 64 requests from 16
clients, some leaving mid-stream and some malformed -- every well-formed request is answered in
full (greedy ones with exactly the text they get alone), nothing hangs (every call has a timeout),
every row is freed and memory comes back near where it started. Then SIGTERM / SIGINT in the
middle of a stream: the stream finishes and the server exits 0."""
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_process import ServerProcess, wait_until  # skips this module without the serve extra's deps

import rwkv_np
from rwkv_np import RwkvForCausalLM, Tokenizer
from rwkv_np.generation import TextStream

httpx = pytest.importorskip("httpx")

CLIENTS, PER_CLIENT = 16, 4
PROMPTS = ["ROMEO:", "JULIET:", "MERCUTIO:\nNay,", "NURSE:\nAnon!", "TYBALT:", "FRIAR LAURENCE:\n", "CAPULET:", "PARIS:"]
SYSTEM = "Verona. A public place. Enter SAMPSON and GREGORY, of the house of Capulet. " * 3
TIMEOUT = httpx.Timeout(60.0)


def sse_events(response):
    """The data of each server-sent event of a streamed response, [DONE] included."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def job(i: int, url: str, expected: dict):
    """Request i of the mix (kind i % 8); returns (kind, ok)."""
    kind, prompt = i % 8, PROMPTS[i // 8 % len(PROMPTS)]
    with httpx.Client(base_url=url + "/v1", timeout=TIMEOUT, headers={"content-type": "application/json"}) as http:
        if kind == 0:    # sampled, whole
            r = http.post("/completions", json={"prompt": prompt, "max_tokens": 40, "temperature": 0.8, "seed": i})
            body = r.json()
            return kind, r.status_code == 200 and body["usage"]["completion_tokens"] >= 1 and \
                body["choices"][0]["finish_reason"] in ("stop", "length")
        if kind == 1:    # greedy, streamed
            with http.stream("POST", "/completions", json={"prompt": prompt, "max_tokens": 50, "temperature": 0,
                                                           "stream": True}) as r:
                events = sse_events(r)
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
            return kind, events[-1] == "[DONE]" and text == expected[prompt, 50]
        if kind == 2:    # chat with a shared system prompt, streamed
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
            with http.stream("POST", "/chat/completions", json={"messages": messages, "max_tokens": 30,
                                                                "temperature": 0, "stream": True}) as r:
                events = sse_events(r)
            return kind, events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"]
        if kind == 3:    # leaves mid-stream
            with http.stream("POST", "/completions", json={"prompt": prompt, "max_tokens": 100_000,
                                                           "stream": True}) as r:
                lines = r.iter_lines()
                return kind, all(next(lines) is not None for _ in range(3))
        if kind == 4:    # not JSON
            r = http.post("/completions", content=b'{"prompt": "' + prompt.encode())
            return kind, r.status_code == 400 and "error" in r.json()
        if kind == 5:    # greedy with a stop string, whole
            full = expected[prompt, 50]
            stop = full[10:12]
            r = http.post("/completions", json={"prompt": prompt, "max_tokens": 50, "temperature": 0, "stop": stop})
            return kind, r.json()["choices"][0]["text"] == full[:full.find(stop)]
        if kind == 6:    # malformed fields
            bad = [{"prompt": prompt, "max_tokens": 0}, {"prompt": prompt, "temperature": "x"},
                   {"prompt": prompt, "model": "nope"}, {"prompt": prompt, "temperature": -1}][i // 8 % 4]
            r = http.post("/completions", json=bad)
            return kind, r.status_code in (400, 404, 422) and set(r.json()["error"]) == {"message", "type", "param", "code"}
        try:             # kind 7: gives up waiting for a whole (not streamed) answer
            http.post("/completions", json={"prompt": prompt, "max_tokens": 100_000}, timeout=0.5)
            return kind, False
        except httpx.TimeoutException:
            return kind, True


def run_load(url: str, expected: dict, jobs: int) -> list:
    def client(c):
        return [job(i, url, expected) for i in range(c, jobs, CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, c) for c in range(CLIENTS)]
        return [r for f in futures for r in f.result(timeout=300)]


@pytest.fixture(scope="module")
def expected():
    model, tokenizer = RwkvForCausalLM.from_pretrained(rwkv_np.DEMO_MODEL), Tokenizer.from_pretrained(rwkv_np.DEMO_MODEL)
    return {(p, 50): "".join(TextStream(model, tokenizer, p, max_new_tokens=50, do_sample=False)) for p in PROMPTS}


def test_64_requests_from_16_clients(expected):
    with ServerProcess() as server:
        health = lambda: httpx.get(server.url + "/health", timeout=10).json()
        idle = lambda: (h := health())["rows"] == 0 and h["waiting"] == 0 and h
        assert all(ok for _, ok in run_load(server.url, expected, 32))   # warm-up: the same mix, half
        wait_until(idle)
        start_mb = server.rss_mb()
        before = health()
        results = run_load(server.url, expected, CLIENTS * PER_CLIENT)
        assert len(results) == 64
        failed = sorted(i for i, (_, ok) in enumerate(results) if not ok)
        assert not failed, f"requests {failed} (kinds {[results[i][0] for i in failed]}) failed"
        after = wait_until(idle)                                          # every row freed
        assert after["cancelled"] - before["cancelled"] == 16            # kinds 3 and 7
        assert after["finished"] - before["finished"] == 32              # kinds 0, 1, 2, 5
        assert after["cache"]["hits"] > before["cache"]["hits"]          # the shared system prompt
        end_mb = server.rss_mb()
        print(f"server RSS: {start_mb:.1f} MB after the warm-up, {end_mb:.1f} MB after 64 requests")
        assert end_mb - start_mb < 25, f"RSS {start_mb:.0f} -> {end_mb:.0f} MB"
        assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_stream_in_flight_and_exits_0(expected, sig):
    with ServerProcess() as server:
        events, started = [], threading.Event()

        def stream():
            with httpx.stream("POST", server.base_url + "/completions", timeout=TIMEOUT,
                              json={"prompt": "ROMEO:", "max_tokens": 2000, "temperature": 0, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
                        started.set()
        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        server.proc.send_signal(sig)                                     # once: a second Ctrl-C forces the exit
        at_signal = len(events)
        assert server.proc.wait(60) == 0
        reader.join(60)
        assert at_signal < 1000 < len(events) and events[-1] == "[DONE]"  # signalled mid-stream, not cut
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        with pytest.raises(httpx.ConnectError):                          # and gone
            httpx.get(server.url + "/health", timeout=5)
