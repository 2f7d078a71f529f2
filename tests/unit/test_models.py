import pytest

from sim.errors import ConfigError
from sim.models import list_models, load_model, parse_model

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b", "qwen-7b",
            "smollm2-135m"]


def test_required_models_are_shipped():
    assert set(REQUIRED) <= set(list_models())


@pytest.mark.parametrize("name,params", [("llama-2-7b", 6.74e9), ("llama-2-13b", 13.02e9), ("llama-2-70b", 68.98e9),
                                         ("llama-3-8b", 8.03e9), ("llama-3-70b", 70.55e9), ("qwen-7b", 7.72e9),
                                         ("smollm2-135m", 0.1349e9)])
def test_parameter_counts_match_published_sizes(name, params):
    assert load_model(name).num_parameters() == pytest.approx(params, rel=0.003)


def test_gqa_and_tied_embeddings():
    m = load_model("llama-2-70b")
    assert m.num_key_value_heads == 8 and m.head_dim == 128
    assert m.linear_shapes()["qkv_proj"] == (8192 + 2 * 1024, 8192)
    assert load_model("smollm2-135m").tie_word_embeddings


def test_bad_model_config_errors():
    raw = {"name": "x", "family": "y", "hidden_size": 64, "num_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 3, "intermediate_size": 128, "vocab_size": 100, "tie_word_embeddings": False,
           "attention_bias": False, "max_position_embeddings": 128}
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        parse_model(raw, "x.yaml")
    with pytest.raises(ConfigError, match="hidden_size.*'64'"):
        parse_model(dict(raw, num_key_value_heads=2, hidden_size="64"), "x.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_model(dict(raw, num_key_value_heads=2, experts=8), "x.yaml")
    with pytest.raises(ConfigError, match="unknown model"):
        load_model("gpt-5")
