"""The model vLLM is given for a profile: a Hugging Face configuration written for an
architecture (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_config

from exegpt.planner.architecture import get_architecture
from exegpt.runner.config import ModelConfig, UnsupportedModel
from exegpt.runner.vllm_model import hf_config_fields, write_model_dir


def test_llama_preset_maps_to_llama_class() -> None:
    config = ModelConfig.from_architecture(get_architecture("llama-2-7b"))
    name, fields = hf_config_fields(config)
    assert name == "LlamaConfig"
    assert fields["num_hidden_layers"] == 32
    assert fields["hidden_size"] == 4096
    assert fields["intermediate_size"] == 11008
    assert fields["num_key_value_heads"] == 32
    assert fields["head_dim"] == 128


def test_opt_preset_maps_to_opt_class() -> None:
    config = ModelConfig.from_architecture(get_architecture("opt-13b"))
    name, fields = hf_config_fields(config)
    assert name == "OPTConfig"
    assert fields["ffn_dim"] == config.ffn_size
    assert fields["activation_function"] == "relu"
    assert fields["enable_bias"] is True


def test_encoder_decoder_is_refused_with_the_way_out() -> None:
    with pytest.raises(UnsupportedModel, match="without --engine vllm"):
        hf_config_fields(tiny_config("t5"))


def test_unmapped_shape_names_what_differs() -> None:
    with pytest.raises(UnsupportedModel, match="position=rope, norm=layernorm"):
        hf_config_fields(tiny_config("llama", norm="layernorm"))


def test_written_config_reads_back_as_the_architecture(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    config = tiny_config("llama")
    write_model_dir(config, tmp_path / "m", "float32")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["architectures"] == ["LlamaForCausalLM"]
    back = ModelConfig.from_directory(tmp_path / "m").architecture
    a = config.architecture
    for name in ("num_layers", "hidden_size", "num_heads", "kv_heads", "ffn_size", "vocab_size"):
        assert getattr(back, name) == getattr(a, name), name


def test_profile_command_refuses_a_model_vllm_does_not_serve(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``exegpt profile --engine vllm`` on an encoder-decoder model fails before any
    engine starts, saying what to do instead."""
    from exegpt.cli import main

    t5 = tiny_config("t5").architecture.model_dump_json(by_alias=True)
    code = main(
        ["profile", "--engine", "vllm", "--architecture-json", t5, "--gpu-type", "cpu",
         "--dtype", "float32", "--output", "-"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "encoder-decoder" in err and "without --engine vllm" in err
