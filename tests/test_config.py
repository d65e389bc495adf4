import json

import pytest

from rwkv_np import ConfigError, RwkvConfig


def test_defaults_are_hf_defaults_and_sizes_derive():
    c = RwkvConfig()
    assert (c.vocab_size, c.context_length, c.hidden_size, c.num_hidden_layers) == (50277, 1024, 4096, 32)
    assert (c.attention_hidden_size, c.intermediate_size) == (4096, 16384)
    assert (c.layer_norm_epsilon, c.rescale_every, c.tie_word_embeddings) == (1e-5, 6, False)
    assert RwkvConfig(hidden_size=64).intermediate_size == 256


def test_hf_config_json_round_trips_with_unknown_keys(tmp_path):
    d = {"model_type": "rwkv", "hidden_size": 32, "num_hidden_layers": 3, "vocab_size": 99,
         "architectures": ["RwkvForCausalLM"], "transformers_version": "5.24.0", "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = RwkvConfig.from_pretrained(tmp_path)
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size) == (32, 3, 99, 128)
    out = c.to_dict()
    assert out["transformers_version"] == "5.24.0" and out["model_type"] == "rwkv"
    assert RwkvConfig.from_dict(out) == c


@pytest.mark.parametrize("bad, fragment", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"hidden_size": "768"}, "hidden_size"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"vocab_size": 2.5}, "vocab_size"),
    ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
    ({"use_cache": "yes"}, "use_cache"),
    ({"model_type": "gpt2"}, "model_type"),
])
def test_invalid_values_are_rejected(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RwkvConfig.from_dict(bad)
