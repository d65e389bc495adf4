"""The server's engine and prompt cache in-process (no HTTP): the LRU stays within its bytes and
finds the longest cached prefix; prompts are cut at the same absolute positions with or without a
cached prefix; a request's text does not depend on what else is in the batch (greedy or seeded);
a prompt that is wholly cached runs no prefill; stop strings end a request; cancelled requests
leave at once; an RWKV-7 model batches as RWKV-4 does; `import rwkv_np` and its CLI load no
server stack, and `serve` without the extra says what to install; the chat formats. Needs none of the serve extra:
the engine is NumPy only."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import FIXTURES, REPO

import rwkv_np
from rwkv_np import RwkvForCausalLM, Tokenizer
from rwkv_np.cli import main
from rwkv_np.generation import TextStream, generate
from rwkv_np.server.cache import PrefixCache
from rwkv_np.server.engine import Engine
from rwkv_np.server.protocol import chat_prompt, chat_segments
from rwkv_np.server.request import Request, Sampling, release
from rwkv_np.tokenizer import ByteTokenizer, WorldTokenizer


@pytest.fixture(scope="module")
def demo():
    return RwkvForCausalLM.from_pretrained(rwkv_np.DEMO_MODEL), Tokenizer.from_pretrained(rwkv_np.DEMO_MODEL)


def entry(n, size=1000):  # a state of `size` float32 bytes after n tokens, and (4,) logits
    return np.arange(n), [np.zeros((1, size // 4), np.float32)], np.full(4, float(n), np.float32)


def test_cache_finds_the_longest_prefix_and_evicts_the_oldest():
    cache = PrefixCache(max_bytes=3 * (1000 + 16 + 8 * 10))
    for n in (3, 6, 10):
        cache.insert(*entry(n))
    n, state, logits = cache.lookup(np.arange(8))       # 6 is the longest prefix of 0..7 cached
    assert n == 6 and logits[0] == 6 and state[0].shape == (1, 250)
    assert cache.lookup(np.array([5, 1, 2]))[0] == 0    # no prefix
    assert cache.lookup(np.arange(10))[0] == 10         # the whole prompt
    cache.insert(*entry(12))                            # over the budget: the least recently used goes
    assert cache.bytes <= cache.max_bytes and cache.stats()["evictions"] == 1
    assert cache.lookup(np.arange(5))[0] == 0           # 3 was it (6 and 10 were looked up since)
    assert cache.lookup(np.arange(7))[0] == 6
    assert PrefixCache(0).lookup(np.arange(3))[0] == 0  # --cache-mb 0
    too_big = PrefixCache(100)
    too_big.insert(*entry(3))
    assert too_big.stats()["entries"] == 0


def test_prompt_cuts_are_absolute_positions(demo):
    engine = Engine(demo[0], PrefixCache(0), prefill_chunk=64)
    r = Request(np.zeros(200, np.int64), Sampling(), None, demo[1], 256, checkpoints=[5, 70])
    cuts = []
    while r.pos < 200:
        r.pos = engine._next_cut(r)
        cuts.append(r.pos)
    assert cuts == [5, 64, 70, 128, 192, 200]
    r.pos = 70                                          # resuming after a cached prefix: same cuts
    assert engine._next_cut(r) == 128


def run(engine, tokenizer, prompts, samplings, cancel_after=None):
    """Submit requests together; -> (texts, finish reasons, usages)."""
    texts, ends, done = [""] * len(prompts), [None] * len(prompts), threading.Semaphore(0)
    requests = []

    def emitter(i):
        def emit(event):
            if event[0] == "text":
                texts[i] += event[1]
                if cancel_after is not None and i in cancel_after and len(texts[i]) >= cancel_after[i]:
                    requests[i].cancelled = True
                    done.release()
            else:
                ends[i] = event[1:]
                done.release()
        return emit
    for i, (p, s) in enumerate(zip(prompts, samplings)):
        requests.append(Request(tokenizer.encode(p), s, emitter(i), tokenizer, 256, eos_ids=[0]))
    for r in requests:
        engine.submit(r)
    for _ in requests:
        assert done.acquire(timeout=120)
    return texts, [e[0] if e else None for e in ends], [e[1] if e else None for e in ends]


@pytest.fixture
def engine(demo):
    engine = Engine(demo[0], PrefixCache(16 << 20), prefill_chunk=8, max_batch=4)
    engine.start()
    yield engine
    engine.stop()
    assert not engine.alive


def test_text_is_the_same_alone_and_in_a_batch(engine, demo):
    prompts = ["ROMEO:", "JULIET:\nO Romeo, Romeo!", "NURSE:", "FRIAR:", "KING RICHARD III:\nNow is the winter"]
    samplings = [Sampling(max_tokens=40, temperature=0), Sampling(max_tokens=25, temperature=0.9, seed=3),
                 Sampling(max_tokens=60, temperature=1.0, top_p=0.8, seed=4, presence_penalty=0.5),
                 Sampling(max_tokens=10, temperature=0.7, seed=5, frequency_penalty=1.0),
                 Sampling(max_tokens=30, temperature=0)]       # 5 requests, 4 rows: one waits its turn
    alone = [run(engine, demo[1], [p], [s]) for p, s in zip(prompts, samplings)]
    together = run(engine, demo[1], prompts, samplings)
    assert together[0] == [a[0][0] for a in alone]
    assert together[1] == ["length"] * 5
    model, tokenizer = demo
    assert together[0][0] == "".join(TextStream(model, tokenizer, "ROMEO:", max_new_tokens=40, do_sample=False))
    assert engine.stats()["steps"] < sum(s.max_tokens for s in samplings) * 2   # rows shared steps


def test_whole_prompt_cached_runs_no_prefill(engine, demo):
    first = run(engine, demo[1], ["MERCUTIO:"], [Sampling(max_tokens=20, temperature=0)])
    prefilled = engine.stats()["prefilled_tokens"]
    again = run(engine, demo[1], ["MERCUTIO:"], [Sampling(max_tokens=20, temperature=0)])
    assert engine.stats()["prefilled_tokens"] == prefilled and again[0] == first[0]
    assert again[2][0]["prompt_tokens_details"]["cached_tokens"] == len("MERCUTIO:")
    longer = run(engine, demo[1], ["MERCUTIO:\nAy"], [Sampling(max_tokens=5, temperature=0)])
    assert longer[2][0]["prompt_tokens_details"]["cached_tokens"] == len("MERCUTIO:")
    assert engine.stats()["prefilled_tokens"] == prefilled + len("\nAy")


def test_stop_string_cuts_the_text(engine, demo):
    full = run(engine, demo[1], ["ROMEO:"], [Sampling(max_tokens=60, temperature=0)])[0][0]
    stop = full[8:11]
    texts, ends, usage = run(engine, demo[1], ["ROMEO:"], [Sampling(max_tokens=60, temperature=0, stop=(stop,))])
    assert (texts[0], ends[0]) == (full[:full.find(stop)], "stop")
    assert usage[0]["completion_tokens"] < 60


def test_cancelled_requests_leave_and_the_rest_go_on(engine, demo):
    samplings = [Sampling(max_tokens=100_000, temperature=0), Sampling(max_tokens=50, temperature=0)]
    _, ends, _ = run(engine, demo[1], ["ROMEO:", "JULIET:"], samplings, cancel_after={0: 20})
    assert ends[0] is None and ends[1] == "length"
    for _ in range(100):                                 # the engine drops it before its next step
        if engine.stats()["cancelled"] == 1:
            break
        threading.Event().wait(0.02)
    assert engine.stats()["cancelled"] == 1 and engine.stats()["rows"] == 0


def test_release_holds_back_what_may_start_a_stop_string():
    assert release("abc\n", ["\n\n"], final=False) == ("abc", "\n", False)
    assert release("abc\n\nxyz", ["\n\n"], final=False) == ("abc", "", True)
    assert release("abc\n", ["\n\n"], final=True) == ("abc\n", "", False)
    assert release("a User", ["\nUser:", "User:"], final=False) == ("a ", "User", False)


def test_rwkv_np_and_its_cli_import_no_server_stack():
    code = ("import sys, rwkv_np, rwkv_np.cli; rwkv_np.cli.build_parser();"
            " print([m for m in ('starlette', 'uvicorn', 'rwkv_np.server.app') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == "[]", out.stderr


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)   # as if not installed
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'rwkv_np[serve]'" in err and len(err.strip().splitlines()) == 1


def test_an_rwkv7_model_batches_too():
    """The engine only calls the model and concatenates its state arrays row-wise: any generation."""
    model = RwkvForCausalLM.from_pretrained(FIXTURES / "v7" / "h2n32.pth")   # a random RWKV-7, vocab 1000
    tokenizer = WorldTokenizer.default()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7], [5] * 10]
    expected = [tokenizer.decode(generate(model, [p], 12, eos_token_id=[], return_dict_in_generate=True).new_tokens[0])
                for p in prompts]
    engine = Engine(model, PrefixCache(1 << 20), prefill_chunk=4)
    engine.start()
    try:
        texts, done = [""] * 3, threading.Semaphore(0)

        def emitter(i):
            def emit(event):
                if event[0] == "text":
                    texts[i] += event[1]
                else:
                    done.release()
            return emit
        for i, p in enumerate(prompts):
            engine.submit(Request(p, Sampling(max_tokens=12, temperature=0), emitter(i), tokenizer, 1000))
        assert all(done.acquire(timeout=120) for _ in prompts)
    finally:
        engine.stop()
    assert texts == expected and engine.stats()["steps"] < 36


def test_chat_formats():
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi\n\n\nthere"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": [{"type": "text", "text": "Bye"}]}]
    assert chat_segments(messages, world=True) == (
        ["System: Be brief.\n\n", "User: Hi\nthere\n\n", "Assistant:", " Hello!\n\n", "User: Bye\n\n", "Assistant:"],
        ("\n\n",))
    assert chat_segments(messages, world=False) == (           # as `rwkv-np chat` writes a conversation
        ["Be brief.\n\n", "User: Hi\n\n\nthere\n\n", "Bot:", " Hello!\n\n", "User: Bye\n\n", "Bot:"],
        ("\n\n", "\nUser:"))
    ids, checkpoints, _ = chat_prompt(messages[:2], ByteTokenizer(), 256)
    assert bytes(ids) == b"Be brief.\n\nUser: Hi\n\n\nthere\n\nBot:" and checkpoints == [11, 29]
