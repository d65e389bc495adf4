"""rwkv-np serve through the official openai client: completions and chat, streaming or not, stop
strings, seeds, /v1/models, usage and cache hits -- and the text is rwkv_np's own: greedy output
through the server equals `rwkv-np generate --temperature 0` and the API's generate."""
import threading

import pytest
from server_process import ServerProcess, wait_until  # skips this module without the serve extra's deps

import rwkv_np
from rwkv_np import RwkvForCausalLM, Tokenizer
from rwkv_np.cli import main
from rwkv_np.generation import TextStream

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

MODEL = "tiny-shakespeare"
LONG_PROMPT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the"
               " sun.\n\n") * 4   # 376 bytes: several prefill chunks


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--prefill-chunk", "64") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def demo():
    return RwkvForCausalLM.from_pretrained(rwkv_np.DEMO_MODEL), Tokenizer.from_pretrained(rwkv_np.DEMO_MODEL)


def greedy_text(demo, prompt, n, stops=()):
    model, tokenizer = demo
    return "".join(TextStream(model, tokenizer, prompt, max_new_tokens=n, do_sample=False, stop_strings=list(stops)))


def stream_text(chunks, chat=False):
    pieces, finish = [], None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        pieces.append((choice.delta.content if chat else choice.text) or "")
        finish = choice.finish_reason or finish
    return "".join(pieces), finish


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


@pytest.mark.parametrize("prompt", ["ROMEO:", LONG_PROMPT])
def test_greedy_equals_generate_cli_and_api(client, demo, prompt, capsys):
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=80, temperature=0)
    assert main(["generate", prompt, "--temperature", "0", "--max-new-tokens", "80"]) == 0
    assert out.choices[0].text + "\n" == capsys.readouterr().out
    assert out.choices[0].text == greedy_text(demo, prompt, 80)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(prompt.encode()) and out.usage.completion_tokens == 80
    assert out.usage.total_tokens == out.usage.prompt_tokens + 80


def test_prompt_as_token_ids(client):
    by_text = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=20, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=list(b"ROMEO:"), max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    with pytest.raises(openai.BadRequestError):           # one prompt per request
        client.completions.create(model=MODEL, prompt=["ROMEO:", "JULIET:"], max_tokens=5)
    with pytest.raises(openai.BadRequestError):           # ids outside the vocabulary
        client.completions.create(model=MODEL, prompt=[300], max_tokens=5)


def test_streaming_equals_whole(client):
    whole = client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=60, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt="JULIET:", max_tokens=60, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert stream_text(chunks) == (whole.choices[0].text, "length")
    assert len(chunks) > 10                        # piece by piece, not one lump
    assert chunks[-1].usage.completion_tokens == 60 and not chunks[-1].choices


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(client, demo, stream):
    full = greedy_text(demo, "KING:", 100)
    stop = full[5:8]
    assert stop and full.find(stop) < len(full) - 3
    for stops in (stop, [stop, "\x00never"]):
        out = client.completions.create(model=MODEL, prompt="KING:", max_tokens=100, temperature=0, stop=stops,
                                        stream=stream)
        text, finish = stream_text(out) if stream else (out.choices[0].text, out.choices[0].finish_reason)
        assert (text, finish) == (full[:full.find(stop)], "stop")


def test_same_seed_same_text(client):
    def sample(seed, stream=False):
        out = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=60, temperature=0.9, top_p=0.9,
                                        seed=seed, stream=stream)
        return stream_text(out)[0] if stream else out.choices[0].text
    first = sample(7)
    assert sample(7) == first and sample(7, stream=True) == first
    assert sample(8) != first


def test_chat(client, demo):
    messages = [{"role": "system", "content": "A scene in Verona."},
                {"role": "user", "content": "Who goes there?"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=120, temperature=0)
    # The demo model is a byte model: a plain transcript, as `rwkv-np chat` writes it.
    transcript = "A scene in Verona.\n\nUser: Who goes there?\n\nBot:"
    expected = greedy_text(demo, transcript, 120, stops=["\n\n", "\nUser:"]).lstrip(" ")
    message = whole.choices[0].message
    assert (message.role, message.content) == ("assistant", expected)
    assert whole.usage.prompt_tokens == len(transcript)
    chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=120, temperature=0,
                                            stream=True)
    assert stream_text(chunks, chat=True) == (expected, whole.choices[0].finish_reason)


def test_cache_hits_are_reported_and_change_nothing(client):
    system = {"role": "system", "content": "Enter the Prince with his train. " * 8}
    asks = ["What says the Prince?", "Where is Romeo?"]
    first = [client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": q}],
                                            max_tokens=40, temperature=0) for q in asks]
    assert first[0].usage.prompt_tokens_details.cached_tokens == 0
    system_tokens = len(system["content"].strip()) + 2                  # "...\n\n" of a byte model
    assert first[1].usage.prompt_tokens_details.cached_tokens == system_tokens
    again = client.chat.completions.create(model=MODEL, messages=[system, {"role": "user", "content": asks[0]}],
                                           max_tokens=40, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens   # the whole prompt
    assert again.choices[0].message.content == first[0].choices[0].message.content


def test_concurrent_requests_share_steps_and_keep_their_text(client, server):
    prompts = ["ROMEO:", "JULIET:", "MERCUTIO:", "NURSE:", "TYBALT:", "FRIAR:"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=150, temperature=0).choices[0].text
             for p in prompts]
    before = httpx.get(server.url + "/health").json()
    together = [None] * len(prompts)

    def run(i):
        together[i] = stream_text(client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=150,
                                                            temperature=0, stream=True))[0]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    after = httpx.get(server.url + "/health").json()
    tokens, steps = (after[k] - before[k] for k in ("generated_tokens", "steps"))
    assert tokens == 150 * len(prompts) and steps < 0.8 * tokens    # rows shared decode steps


def test_client_disconnect_stops_generation(server):
    before = httpx.get(server.url + "/health").json()["cancelled"]
    with httpx.stream("POST", server.base_url + "/completions", timeout=60,
                      json={"model": MODEL, "prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: {") and all(next(lines) is not None for _ in range(5))
    health = wait_until(lambda: (h := httpx.get(server.url + "/health").json())["cancelled"] > before and h)
    assert health["rows"] == 0 and health["waiting"] == 0


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "a", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": "a", "temperature": -0.5}', 400, "temperature"),
    (b'{"prompt": "a", "n": 2}', 400, "n"),
    (b'{"prompt": "a", "temperature": "hot"}', 422, "temperature"),
    (b'{"prompt": "a", "max_tokens": 2.5}', 422, "max_tokens"),
    (b'{"prompt": "a", "stop": [1]}', 422, "stop"),
    (b'{"prompt": 7}', 422, "prompt"),
    (b'{"prompt": "a", "model": "gpt-4"}', 404, "model"),
    (b'{"prompt": "a", "temperature": NaN}', 400, None),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(server.base_url + "/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert httpx.get(server.url + "/health").json()["status"] == "ok"   # still serving


def test_errors_through_the_client(client, server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=5)
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt="x" * 20_000, max_tokens=1)
    assert e.value.status_code == 413
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_a_dead_engine_gives_503_not_a_hang(demo):
    from starlette.testclient import TestClient

    from rwkv_np.server.app import create_app
    from rwkv_np.server.cache import PrefixCache
    from rwkv_np.server.engine import Engine

    app = create_app(Engine(demo[0], PrefixCache(0)), demo[1], MODEL)   # engine never started
    http = TestClient(app)                                              # (no lifespan: not a `with`)
    assert http.get("/health").status_code == 503
    r = http.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 5})
    assert r.status_code == 503 and r.json()["error"]["message"] == "the engine has stopped"
    with http.stream("POST", "/v1/completions", json={"prompt": "ROMEO:", "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert "the engine has stopped" in events[0] and events[-1] == "data: [DONE]"
