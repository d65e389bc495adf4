"""What a new user is told (issue 17): files of another RWKV generation are named as such, NumPy
dtypes are accepted, `info` checks what it describes, and missing test data is explained.

The generation tests hold whether or not this version runs RWKV-5/6: they ask that the generation
be named, and use a made-up "RWKV-9" for the refusal itself.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, REPO, SHARED_DATA, absent, random_state_dict
from rwkv_np import ConfigError, InputError, ModelFileError, RwkvConfig, RwkvForCausalLM
from rwkv_np import generations
from rwkv_np.cli import main
from rwkv_np.convert import save_pretrained
from rwkv_np.formats.safetensors import write_safetensors
from rwkv_np.generations import Generation, detect
from rwkv_np.load import load


@pytest.fixture
def model_dir(tmp_path):
    config = RwkvConfig(vocab_size=256, hidden_size=8, num_hidden_layers=2, intermediate_size=12)
    save_pretrained(tmp_path / "m", config, random_state_dict(config, seed=2))
    return tmp_path / "m"


def run_main(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- 8. another generation's file ------------------------------------------------------------------

RWKV9 = Generation("v9", "RWKV-9", "rwkv9", (".att.time_future",), None)


def test_an_unsupported_generation_is_named_from_its_tensor_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generations, "GENERATIONS", (RWKV9, *generations.GENERATIONS))
    tensors = {"emb.weight": np.zeros((4, 2), np.float32), "blocks.0.att.time_future": np.zeros(2, np.float32),
               "blocks.0.att.time_decay": np.ones(2, np.float32)}  # a v4 name too: not a v4 file
    write_safetensors(str(tmp_path / "future.safetensors"), tensors)
    with pytest.raises(ModelFileError, match="this is an RWKV-9 model, which this version of rwkv_np does not run"):
        RwkvForCausalLM.from_pretrained(tmp_path / "future.safetensors")
    rc, out, err = run_main(capsys, "info", "--model", tmp_path / "future.safetensors")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "RWKV-9" in err


def test_an_unsupported_model_type_is_named(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(generations, "GENERATIONS", (RWKV9, *generations.GENERATIONS))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "rwkv9"}))
    with pytest.raises(ConfigError, match="this is an RWKV-9 model, which this version of rwkv_np does not run"):
        RwkvForCausalLM.from_pretrained(model_dir)
    rc, _, err = run_main(capsys, "generate", "Hi", "--model", model_dir)
    assert rc == 2 and err.count("\n") == 1 and "RWKV-9" in err


@pytest.mark.parametrize("title, names", [
    ("RWKV-5", ["emb.weight", "blocks.0.att.time_decay", "blocks.0.att.time_faaaa", "blocks.0.att.ln_x.weight"]),
    ("RWKV-6", ["emb.weight", "blocks.0.att.time_decay", "blocks.0.att.time_maa_x", "blocks.0.att.ln_x.weight"]),
    ("RWKV-7", ["emb.weight", "blocks.0.att.r_k", "blocks.0.att.ln_x.weight"]),
])
def test_blinkdl_names_of_later_generations_are_recognised(title, names):
    """Before: a v5/v6 file loaded as RWKV-4 ("time_decay holds values that are not < 0")."""
    try:
        gen = detect(names, "x.pth")
    except ModelFileError as e:  # recognised, not run by this version
        assert f"this is an {title} model" in str(e)
    else:
        assert gen.title == title


@pytest.mark.parametrize("file, title", [("tiny-rwkv-5v2-730K-FP32.bin", "RWKV-5"),
                                         ("tiny-rwkv-6v0-3m-Q5_0.bin", "RWKV-6")])
def test_rwkvcpp_files_of_later_generations_load_or_are_named(shared_data, file, title):
    path = shared_data / "rwkvcpp" / file
    if not path.is_file():
        pytest.skip(absent(path))
    try:
        gen, _, _ = load(path)
    except ModelFileError as e:
        assert title in str(e) and "time_decay" not in str(e), str(e)
    else:
        assert gen.title == title


# -- 10. NumPy dtypes --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.dtype("float64"), "f8", float])
def test_numpy_dtypes_are_accepted(model_dir, dtype):
    ids = np.array([[1, 2, 3, 70]])
    model = RwkvForCausalLM.from_pretrained(model_dir, dtype=dtype)
    assert model.dtype == np.float64
    np.testing.assert_array_equal(model(ids).logits, RwkvForCausalLM.from_pretrained(model_dir, dtype="float64")(ids).logits)


def test_numpy_dtypes_are_accepted_by_rwkv7():
    model = RwkvForCausalLM.from_pretrained(FIXTURES / "v7" / "h2n32.pth", dtype=np.float32)
    assert model.dtype == np.float32 and type(model).__name__ != "RwkvForCausalLM"


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "bfloat16", None, "float"])
def test_other_dtypes_are_refused(model_dir, dtype):
    if dtype == "float":  # np.dtype("float") is float64: a name NumPy users know, accepted
        assert RwkvForCausalLM.from_pretrained(model_dir, dtype=dtype).dtype == np.float64
        return
    with pytest.raises(InputError, match=r"dtype: expected one of \['float32', 'float64'\]"):
        RwkvForCausalLM.from_pretrained(model_dir, dtype=dtype)


# -- 11. info checks what it describes -----------------------------------------------------------------

def rewrite(model_dir, change):
    from rwkv_np.formats.safetensors import read_files
    tensors = {n: np.array(x) for n, x in read_files([model_dir / "model.safetensors"]).items()}
    change(tensors)
    (model_dir / "model.safetensors").unlink()
    write_safetensors(str(model_dir / "model.safetensors"), tensors)


@pytest.mark.parametrize("change", [
    lambda t: t.pop("rwkv.blocks.1.attention.key.weight"),
    lambda t: t.update({"rwkv.blocks.0.ln1.weight": np.ones(7, np.float32)}),
])
def test_info_refuses_a_missing_or_misshaped_tensor_as_the_loader_does(model_dir, change, capsys):
    rewrite(model_dir, change)
    with pytest.raises(ModelFileError) as loader:
        RwkvForCausalLM.from_pretrained(model_dir)
    rc, out, err = run_main(capsys, "info", "--model", model_dir)
    assert (rc, out) == (2, "") and err == f"rwkv-np info: error: {loader.value}\n"


def test_info_check_reads_the_values(model_dir, capsys):
    rewrite(model_dir, lambda t: t["rwkv.blocks.1.feed_forward.value.weight"].__setitem__((3, 4), np.nan))
    rc, out, _ = run_main(capsys, "info", "--model", model_dir)
    assert rc == 0 and "parameters" in out  # the header is fine: info describes the model
    rc, out, err = run_main(capsys, "info", "--model", model_dir, "--check")
    assert rc == 2 and out == "" and "rwkv.blocks.1.feed_forward.value.weight holds non-finite" in err
    rewrite(model_dir, lambda t: t["rwkv.blocks.1.feed_forward.value.weight"].__setitem__((3, 4), 0.5))
    rc, out, _ = run_main(capsys, "info", "--model", model_dir, "--check")
    assert rc == 0 and "finite" in out.splitlines()[-1]


# -- 12. where the test data lives ----------------------------------------------------------------------

def test_test_data_directory_comes_from_rwkv_np_test_data(tmp_path):
    env = {**os.environ, "RWKV_NP_TEST_DATA": str(tmp_path)}
    code = "import conftest; print(conftest.SHARED_DATA)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", env=env, capture_output=True, text=True)
    assert result.stdout.strip() == str(tmp_path), result.stderr
    assert "RWKV_NP_TEST_DATA" in absent(SHARED_DATA / "x.bin") and "x.bin" in absent(SHARED_DATA / "x.bin")


def test_readme_test_section_names_the_files_and_the_variable():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tests = readme[readme.index("\n## Tests"):]
    for word in ("RWKV_NP_TEST_DATA", "rwkvcpp/", "tinyshakespeare.txt", "20B_tokenizer.json"):
        assert word in tests
