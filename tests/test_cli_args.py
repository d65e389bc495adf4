"""Every rwkv-np command over bad arguments: one line on stderr naming the flag, exit status 2, no
traceback, nothing on stdout, and nothing run first (issue 17, item 4); and the smaller things a
new user met (item 9): help text, --version, golden's default model, compare's order, file modes,
Ctrl-C while importing, a hint when the prompt is read from a terminal, tools/bench.py --peers.
"""
import io
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, random_state_dict
from rwkv_np import DEMO_MODEL, RwkvConfig
from rwkv_np.cli import build_parser, main
from rwkv_np.convert import save_pretrained

BAD = [  # (arguments, what the one line must say); {tmp}: a directory, {file}: an existing file
    ("generate Hi --max-new-tokens -1", "--max-new-tokens: expected an integer >= 0, got -1"),
    ("generate Hi --temperature -1", "--temperature: expected a number >= 0"),
    ("generate Hi --temperature nan", "--temperature: expected a number >= 0"),
    ("generate Hi --top-p 0", "--top-p: expected a number in (0, 1], got 0.0"),
    ("generate Hi --top-p 2", "--top-p: expected a number in (0, 1], got 2.0"),
    ("generate Hi --top-k -1", "--top-k: expected an integer >= 0"),
    ("generate Hi --repetition-penalty 0", "--repetition-penalty: expected a number > 0"),
    ("generate Hi --penalty-decay 1.5", "--penalty-decay: expected a number in [0, 1]"),
    ("generate Hi --presence-penalty inf", "--presence-penalty: expected a finite number"),
    ("generate Hi --prefill-chunk-size 0", "--prefill-chunk-size: expected an integer >= 1"),
    ("generate Hi --stop=", "--stop: an empty TEXT would stop before the first token"),
    ("generate Hi --ban -1", "--ban: expected token ids >= 0, got -1"),
    ("generate Hi --ban 999999", "--ban: token id 999999 is outside the vocabulary [0, 256)"),
    ("generate Hi --save-state /nonexistent/x.st", "--save-state: cannot write /nonexistent/x.st"),
    ("generate Hi --save-state {tmp}", "it is a directory"),
    ("generate Hi --load-state {tmp}/none.st", "none.st: no such state file"),
    ("generate Hi --load-state {file}", "not a readable safetensors state file"),
    ("generate Hi --threads 0", "--threads: expected a number of threads >= 1, got 0"),
    ("generate Hi --model {tmp}/none", "--model: {tmp}/none: no such file or directory"),
    ("generate Hi --model {file}", "{file}: not an HF-style model directory"),
    ("generate Hi --top-p abc", "argument --top-p: invalid float value: 'abc'"),
    ("generate Hi --dtype float16", "argument --dtype: invalid choice: 'float16'"),
    ("generate", "prompt: empty"),
    ("chat --temperature -1", "--temperature: expected a number >= 0"),
    ("chat --ban 256", "--ban: token id 256 is outside the vocabulary [0, 256)"),
    ("chat --load-state {file}", "not a readable safetensors state file"),
    ("score {tmp}/none.txt", "file: cannot read {tmp}/none.txt (No such file or directory)"),
    ("score {file} --max-tokens -1", "--max-tokens: must be >= 0"),
    ("score {file} --chunk-size 0", "--chunk-size: must be >= 1"),
    ("score {file}", "scoring needs at least 2"),
    ("info --threads 2", "unrecognized arguments: --threads 2"),
    ("info --weights int8", "unrecognized arguments: --weights int8"),
    ("info --model {tmp}/none", "--model: {tmp}/none: no such file or directory"),
    ("golden --prompt Hi --out {file}", "--out: cannot write {file} ({file} exists and is not a directory)"),
    ("golden --prompt Hi --out /proc/nope", "--out: cannot write /proc/nope"),
    ("golden --prompt Hi --new-tokens -1 --out {tmp}/g", "--new-tokens: must be >= 0, got -1"),
    ("golden --ids a,b --out {tmp}/g", "--ids: expected integers"),
    ("golden --ids 1,999 --out {tmp}/g", "token id 999 is outside the vocabulary [0, 256)"),
    ("golden --out {tmp}/g", "one of the arguments --prompt --ids --prompts is required"),
    ("golden --prompts {tmp}/none --out {tmp}/g", "--prompts: cannot read {tmp}/none (No such file or directory)"),
    ("compare {tmp}/none {file}", "manifest.json: not a readable golden manifest"),
    ("compare {tmp} {file} --atol-scale 0", "--atol-scale: must be positive"),
    ("convert {tmp}/none --out {tmp}/c", "{tmp}/none: no such file or directory"),
    ("convert {file} --out {tmp}/c", "not an HF-style model directory"),
    ("convert {demo} --out {file}", "--out: cannot write {file}"),
    ("convert {demo} --out {tmp}/c --tokenizer {tmp}/none.json", "--tokenizer: {tmp}/none.json: no such file"),
    ("quantize {tmp}/none --out {tmp}/q", "{tmp}/none: no such file or directory"),
    ("quantize {demo} --out /proc/nope", "--out: cannot write /proc/nope"),
    ("serve --model {tmp}/none", "--model: {tmp}/none: no such file or directory"),
    ("serve --max-batch 0", "--max-batch"),
    ("", "the following arguments are required: COMMAND"),
    ("bogus", "invalid choice: 'bogus'"),
]


def call(argv, monkeypatch, stdin=""):
    """main(argv) in this process, as a user's shell runs it: -> (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("line, says", BAD, ids=[b[0] or "(nothing)" for b in BAD])
def test_bad_arguments_give_one_line_and_exit_2(line, says, tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("")
    fill = dict(tmp=tmp_path, file=tmp_path / "file.txt", demo=DEMO_MODEL)
    argv = [a.format(**fill) for a in line.split()]
    status, out, err = call(argv, monkeypatch)
    assert (status, out) == (2, ""), err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert says.format(**fill) in err, err
    assert not any(p.name in ("g", "c", "q") for p in tmp_path.iterdir())  # nothing written


def test_no_argument_line_names_an_api_parameter(tmp_path, monkeypatch):
    """The API's words (top_p, do_sample=False, suppress_tokens) are not the user's flags."""
    for line, _ in BAD:
        if line.startswith(("generate", "chat")):
            err = call([a.format(tmp=tmp_path, file=tmp_path, demo=DEMO_MODEL) for a in line.split()], monkeypatch)[2]
            assert not re.search(r"\b(top_p|top_k|do_sample|suppress_tokens|max_new_tokens|stop_strings)\b", err), err


@pytest.mark.parametrize("command", ["generate", "chat", "score", "info", "golden", "compare", "convert", "quantize"])
def test_help_says_each_default_once_and_every_command_has_a_description(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = " ".join(sub.format_help().split())
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    assert not re.search(r"default[^()]*\) \(default:", text), text
    assert sub.description


def test_version(monkeypatch):
    from rwkv_np import __version__
    assert call(["--version"], monkeypatch)[:2] == (0, f"rwkv-np {__version__}\n")


def test_golden_runs_on_the_demo_model_by_default(tmp_path, monkeypatch):
    status, _, err = call(["golden", "--prompt", "ROMEO:", "--new-tokens", "2", "--out", str(tmp_path / "g")], monkeypatch)
    assert status == 0, err
    assert (tmp_path / "g" / "manifest.json").is_file()


def test_files_are_written_with_the_users_umask(tmp_path, monkeypatch):
    """safetensors' writer made state and golden files 0600; they follow the umask as others do."""
    old = os.umask(0o022)
    try:
        assert call(["generate", "Hi", "--max-new-tokens", "1", "--save-state", str(tmp_path / "s.st")], monkeypatch)[0] == 0
        assert call(["golden", "--ids", "1 2", "--new-tokens", "1", "--out", str(tmp_path / "g")], monkeypatch)[0] == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "s.st", tmp_path / "g" / "golden.safetensors", tmp_path / "g" / "float32.safetensors"):
        assert oct(f.stat().st_mode & 0o777) == oct(0o644), f


def test_compare_lists_blocks_in_model_order(tmp_path, monkeypatch):
    config = RwkvConfig(vocab_size=256, hidden_size=8, num_hidden_layers=12, intermediate_size=8)
    save_pretrained(tmp_path / "m", config, random_state_dict(config))
    assert call(["golden", "--model", str(tmp_path / "m"), "--ids", "1 2 3", "--new-tokens", "1",
                 "--out", str(tmp_path / "g")], monkeypatch)[0] == 0
    status, out, _ = call(["compare", str(tmp_path / "g"), str(tmp_path / "g" / "float32.safetensors"),
                           "--verbose"], monkeypatch)
    assert status == 0
    blocks = [int(b) for b in re.findall(r"^prompt0\.blocks\.(\d+)\.output", out, flags=re.M)]
    assert blocks == list(range(12))


def test_prompt_from_a_terminal_gets_a_hint(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", Terminal("ROMEO:"))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["generate", "--max-new-tokens", "2"]) == 0
    assert "Ctrl-D" in err.getvalue() and "standard input" not in out.getvalue()


def test_ctrl_c_while_numba_loads_prints_no_traceback(monkeypatch):
    """The command line's module imports no numba, so main() catches a Ctrl-C during the import."""
    code = "import sys, rwkv_np.cli; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr

    def interrupted():
        raise KeyboardInterrupt  # where `import numba` is, inside build_parser
    monkeypatch.setattr("rwkv_np.cli.build_parser", interrupted)
    assert call(["generate", "Hi"], monkeypatch) == (130, "", "\n")


def test_bench_peers_without_torch_is_one_line(tmp_path):
    (tmp_path / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "model", "--peers"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]  # transformers and rwkv may be missing too (CI has neither)
    assert "not installed: torch" in last and last.endswith("(pip install '.[dev]')")
    assert "issue" not in subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--help"],
                                         capture_output=True, text=True).stdout
