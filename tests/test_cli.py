"""The rwkv-np command line: generate / chat / score / info on a small random byte model, errors as
one line with exit status 2, and a chat driven through a pipe that carries its state."""
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

from conftest import REPO, random_state_dict
from rwkv_np import RwkvConfig, RwkvForCausalLM, set_threads
from rwkv_np.cli import build_parser, main
from rwkv_np.generation import TextStream, generate
from rwkv_np.storage import Int8Weight
from rwkv_np.tokenizer import ByteTokenizer
from rwkv_np.convert import save_pretrained

CHAT_STOPS = ["\n\n", "\nUser:"]


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    """A random byte-level model (vocab 256, no tokenizer.json) saved in HF layout."""
    directory = tmp_path_factory.mktemp("byte_model")
    config = RwkvConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2)
    save_pretrained(directory, config, random_state_dict(config, seed=3))
    return str(directory)


def run_cli(*argv, stdin=""):
    """The CLI in a subprocess, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "rwkv_np", *argv], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=300)


def test_generate_prints_what_the_api_generates(byte_model, capsys):
    assert main(["generate", "Hello", "--model", byte_model, "--max-new-tokens", "12", "--seed", "5"]) == 0
    model = RwkvForCausalLM.from_pretrained(byte_model)
    stream = TextStream(model, ByteTokenizer(), "Hello", max_new_tokens=12, do_sample=True, top_p=0.85, seed=5)
    assert capsys.readouterr().out == "".join(stream) + "\n"


def test_generate_greedy_from_stdin_and_stop(byte_model, capsys, monkeypatch):
    model = RwkvForCausalLM.from_pretrained(byte_model)
    ids = generate(model, [list(b"Hi")], max_new_tokens=10, eos_token_id=[], return_dict_in_generate=True)
    full = bytes(ids.new_tokens[0]).decode("utf-8", errors="replace")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hi"))
    assert main(["generate", "--model", byte_model, "--max-new-tokens", "10", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    if 0 in ids.new_tokens[0]:  # the config's eos (byte 0) ends the CLI's text early
        full = bytes(ids.new_tokens[0][:ids.new_tokens[0].index(0) + 1]).decode("utf-8", errors="replace")
    assert out == full + "\n"
    stop = full[3:5]
    assert main(["generate", "Hi", "--model", byte_model, "--max-new-tokens", "10", "--temperature", "0",
                 "--stop", stop]) == 0
    assert capsys.readouterr().out == full[:full.find(stop)] + "\n"


def test_chat_through_a_pipe_answers_two_turns_and_carries_state(byte_model, tmp_path):
    result = run_cli("chat", "--model", byte_model, "--temperature", "0", "--max-new-tokens", "16",
                     stdin=f"Hello there\nAnd then?\n/save {tmp_path / 'chat.st'}\n/reset\nAnd then?\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    answers = re.findall(r"Bot:(.*?)\n(?=Bot:|\[)", out, flags=re.S)
    # Expected answers from the Python API: turn 2 is answered with the whole conversation as context.
    model, tok = RwkvForCausalLM.from_pretrained(byte_model), ByteTokenizer()
    kw = dict(max_new_tokens=16, stop_strings=CHAT_STOPS, tokenizer=tok, return_dict_in_generate=True)
    turn1 = tok.encode("User: Hello there\n\nBot:")
    first = generate(model, [turn1], **kw)
    sep = "" if first.stop_reasons[0] == "stop_string" else "\n\n"
    turn2 = tok.encode(sep + "User: And then?\n\nBot:")
    second = generate(model, [turn1 + first.new_tokens[0] + turn2], **kw)
    fresh = generate(model, [tok.encode("User: And then?\n\nBot:")], **kw)
    text = lambda o: cut(tok.decode(o.new_tokens[0]))
    assert answers[:2] == [text(first), text(second)]
    assert "[saved to" in out and "[conversation reset]" in out and (tmp_path / "chat.st").is_file()
    assert out.endswith("Bot:" + text(fresh) + "\n")  # after /reset the same message starts afresh
    assert text(second) != text(fresh)


def cut(text):
    hits = [i for i in (text.find(s) for s in CHAT_STOPS) if i >= 0]
    return text[:min(hits)] if hits else text


def test_score_prints_nats_per_char_equal_to_the_model_loss(byte_model, tmp_path, capsys):
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["score", str(tmp_path / "t.txt"), "--model", byte_model, "--chunk-size", "50"]) == 0
    out = capsys.readouterr().out
    nats_per_char = float(re.search(r"^(\S+) nats/char$", out, flags=re.M).group(1))
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)[None]
    loss = RwkvForCausalLM.from_pretrained(byte_model)(ids, labels=ids).loss  # one pass, mean over len-1
    assert nats_per_char == pytest.approx(loss, rel=1e-5)  # ASCII: one char per scored byte token
    bits_per_byte = float(re.search(r"^(\S+) bits/byte$", out, flags=re.M).group(1))
    assert bits_per_byte == pytest.approx(loss / np.log(2), rel=1e-5)


def test_info_counts_parameters(byte_model, capsys):
    assert main(["info", "--model", byte_model]) == 0
    out = capsys.readouterr().out
    V, H, L = 256, 32, 2
    A, I = H, 4 * H
    per_layer = 4 * H + 2 * A + 3 * H + 3 * A * H + H * A + 2 * H + I * H + H * H + H * I
    assert f"{2 * V * H + 2 * H + L * per_layer + 2 * H:,}" in out
    assert "float32" in out and "bytes (vocab 256)" in out


def test_threads_and_weights_options(byte_model, capsys):
    """--weights int8 --threads 1 generates what the API does with weights="int8"."""
    try:
        assert main(["generate", "Hi", "--model", byte_model, "--max-new-tokens", "8", "--temperature", "0",
                     "--weights", "int8", "--threads", "1"]) == 0
        assert numba.get_num_threads() == 1
    finally:
        set_threads()
    model = RwkvForCausalLM.from_pretrained(byte_model, weights="int8")
    assert isinstance(model.head, Int8Weight)
    stream = TextStream(model, ByteTokenizer(), "Hi", max_new_tokens=8, do_sample=False)
    assert capsys.readouterr().out == "".join(stream) + "\n"
    assert main(["generate", "Hi", "--model", byte_model, "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and err.count("\n") == 1


def test_errors_are_one_line_and_exit_2(tmp_path):
    result = run_cli("generate", "x", "--model", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--model" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "config.json").write_text("{broken")
    result = run_cli("info", "--model", str(tmp_path))
    assert result.returncode == 2 and "config.json" in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    from rwkv_np.errors import InputError
    with pytest.raises(InputError):
        main(["generate", "x", "--model", str(tmp_path / "missing"), "--debug"])


@pytest.mark.parametrize("command", ["generate", "chat", "score", "info"])
def test_help_shows_defaults(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = sub.format_help()
    assert "--model" in text and "--debug" in text
    if command in ("generate", "chat"):
        for flag in ("--temperature", "--top-p", "--top-k", "--seed", "--stop", "--max-new-tokens",
                     "--repetition-penalty", "--presence-penalty", "--frequency-penalty"):
            assert flag in text
        assert "(default: 0.85)" in text


def test_module_entry_point_help():
    result = run_cli("--help")
    assert result.returncode == 0 and "generate" in result.stdout and "chat" in result.stdout


def test_generate_saves_a_state_that_a_later_run_continues(byte_model, tmp_path, capsys):
    state = str(tmp_path / "s.safetensors")
    greedy = ["--model", byte_model, "--temperature", "0"]
    assert main(["generate", "Once upon", "--max-new-tokens", "0", "--save-state", state, *greedy]) == 0
    assert capsys.readouterr().out == "\n"  # nothing generated: the state covers the prompt
    assert main(["generate", " a time", "--max-new-tokens", "12", "--load-state", state, *greedy]) == 0
    resumed = capsys.readouterr().out
    assert main(["generate", "Once upon a time", "--max-new-tokens", "12", *greedy]) == 0
    assert resumed == capsys.readouterr().out


def test_default_model_is_the_shipped_demo(capsys):
    from rwkv_np.cli_options import demo_model_dir
    if demo_model_dir() is None:
        pytest.skip("no demo model in rwkv_np/assets/ yet")
    assert main(["generate", "ROMEO:", "--max-new-tokens", "30", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out) > 1
