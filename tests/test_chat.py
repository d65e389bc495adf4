"""rwkv-np chat as a new user meets it (issue 17, item 5), and the first-run compile notice (item 6).

The expected answers come from the Python API (TextStream) fed the turns the chat documents:
'User: message\\n\\nBot:' (World models: 'User: message\\n\\nAssistant:', stop at a blank line),
with one random generator for the whole conversation.
"""
import builtins
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, random_state_dict
from rwkv_np import RwkvConfig, RwkvForCausalLM
from rwkv_np.cli import main
from rwkv_np.convert import save_pretrained
from rwkv_np.generation import TextStream
from rwkv_np.tokenizer import ByteTokenizer, WorldTokenizer

STOPS = ["\n\n", "\nUser:"]


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chat_model")
    config = RwkvConfig(vocab_size=256, hidden_size=16, num_hidden_layers=2)
    save_pretrained(directory, config, random_state_dict(config, seed=4))
    return str(directory)


def chat(monkeypatch, capsys, model, lines: str, *flags, stdin=None):
    monkeypatch.setattr(sys, "stdin", stdin or io.StringIO(lines))
    status = main(["chat", "--model", model, "--max-new-tokens", "12", *flags])
    out, err = capsys.readouterr()
    return status, out, err


def answer(model, tokenizer, prompt, state=None, stops=STOPS, **kw):
    stream = TextStream(model, tokenizer, prompt, state=state, max_new_tokens=12, stop_strings=stops, **kw)
    text = "".join(stream)
    return text, stream.output.state, stream.output.stop_reasons[0] == "stop_string"


def test_seed_is_set_once_per_conversation(byte_model, monkeypatch, capsys):
    status, out, _ = chat(monkeypatch, capsys, byte_model, "Hello\nHello\n", "--seed", "7", "--top-p", "1")
    model, tok = RwkvForCausalLM.from_pretrained(byte_model), ByteTokenizer()
    rng = np.random.default_rng(7)
    first, state, stopped = answer(model, tok, "User: Hello\n\nBot:", do_sample=True, top_p=1.0, seed=rng)
    turn2 = ("" if stopped else "\n\n") + "User: Hello\n\nBot:"
    second = answer(model, tok, turn2, state, do_sample=True, top_p=1.0, seed=rng)[0]
    reseeded = answer(model, tok, turn2, state, do_sample=True, top_p=1.0, seed=7)[0]
    assert second != reseeded  # the test tells the two apart
    assert status == 0 and out == f"Bot:{first}\nBot:{second}\n"


def test_world_models_chat_as_user_and_assistant(tmp_path, monkeypatch, capsys):
    config = RwkvConfig(vocab_size=65536, hidden_size=8, num_hidden_layers=1, intermediate_size=16)
    save_pretrained(tmp_path, config, random_state_dict(config, seed=9))
    status, out, _ = chat(monkeypatch, capsys, str(tmp_path), "Hi there\n", "--temperature", "0")
    model = RwkvForCausalLM.from_pretrained(tmp_path)
    text = answer(model, WorldTokenizer.default(), "User: Hi there\n\nAssistant:", stops=["\n\n"], do_sample=False)[0]
    assert status == 0 and out == f"Assistant:{text}\n"


def test_unknown_commands_get_a_hint_and_reach_no_model(byte_model, monkeypatch, capsys):
    status, out, _ = chat(monkeypatch, capsys, byte_model, "/hepl\nHello\n//etc\n", "--temperature", "0")
    model, tok = RwkvForCausalLM.from_pretrained(byte_model), ByteTokenizer()
    hello, state, stopped = answer(model, tok, "User: Hello\n\nBot:", do_sample=False)
    etc = answer(model, tok, ("" if stopped else "\n\n") + "User: /etc\n\nBot:", state, do_sample=False)[0]
    lines = out.split("\n", 1)
    assert status == 0 and lines[0].startswith("[unknown command /hepl;") and "/help" in lines[0]
    assert lines[1] == f"Bot:{hello}\nBot:{etc}\n"  # the hint changed no state; // sends one /


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(byte_model, monkeypatch, capsys):
    import rwkv_np.chat as chat_module
    real, calls = chat_module.print_piece, []

    def interrupt_first_answer(text):
        calls.append(text)
        if len(calls) == 2:  # the first piece after "Bot:"
            raise KeyboardInterrupt
        real(text)
    monkeypatch.setattr(chat_module, "print_piece", interrupt_first_answer)
    status, out, _ = chat(monkeypatch, capsys, byte_model, "Tell me\nHello\n", "--temperature", "0")
    model, tok = RwkvForCausalLM.from_pretrained(byte_model), ByteTokenizer()
    fresh = answer(model, tok, "User: Hello\n\nBot:", do_sample=False)[0]
    assert status == 0 and out == f"Bot:\n[answer stopped; this turn is not kept]\nBot:{fresh}\n"


def test_ctrl_c_at_the_prompt_ends_the_chat_quietly(byte_model, monkeypatch, capsys):
    class Interrupted(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt
    status, out, err = chat(monkeypatch, capsys, byte_model, "", stdin=Interrupted())
    assert (status, out, err) == (130, "", "\n")


def test_ctrl_d_at_a_terminal_prompt_leaves_a_newline(byte_model, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def end_of_file(prompt=""):
        raise EOFError
    monkeypatch.setattr(builtins, "input", end_of_file)
    status, out, err = chat(monkeypatch, capsys, byte_model, "", stdin=Terminal())
    assert status == 0 and out == "\n" and "/quit" in err


def test_a_failed_save_keeps_the_conversation(byte_model, monkeypatch, capsys, tmp_path):
    status, out, _ = chat(monkeypatch, capsys, byte_model, "Hello\n/save /nonexistent/dir/c.st\n/save\nHello\n",
                          "--temperature", "0")
    assert status == 0
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert lines == ["[/nonexistent/dir/c.st: cannot write the state (No such file or directory)]",
                     "[/save needs a file name]"]
    assert out.count("Bot:") == 2


def test_the_first_run_says_it_is_compiling_once(tmp_path):
    """A cold Numba cache (a new NUMBA_CACHE_DIR) compiles and says so on stderr, once; the next
    run, served from the cache, says nothing. stdout is the same both times."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "rwkv_np", "generate", "ROMEO:", "--max-new-tokens", "3", "--temperature", "0"]
    runs = [subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stderr.count("compiling kernels (first run only, ~") == 1, runs[0].stderr
    assert "compiling" not in runs[1].stderr and runs[0].stdout == runs[1].stdout
