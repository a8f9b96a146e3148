"""Every registered family has a tiny model the tests build: the families come from
``probe.families.FAMILIES`` and the tiny models from what tests/tiny.py and tests/tiny_gated.py
provide (their config builders and model-directory writers), so a family added without a
tiny model fails here instead of going untested."""

import inspect

import tiny
import tiny_gated
import transformers as tf

from probe import load_model
from probe.families import FAMILIES, family_for_config


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def tiny_configs(tmp_path) -> dict[str, object]:
    """name -> config of every tiny model the test helpers build."""
    configs = {name: make() for name, make in tiny.CONFIGS.items()}
    for module in (tiny, tiny_gated):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__:
                continue
            if name.endswith("_config"):
                configs.setdefault(name.removesuffix("_config"), fn())
            elif name.startswith("save_") and name != "save_tiny":  # remote-code directories
                path = fn(tmp_path / name)
                configs[name] = tf.AutoConfig.from_pretrained(path, trust_remote_code=True)
    return configs


def test_every_family_has_a_tiny_model(tmp_path):
    covered = {id(family_for_config(_text(c))): n for n, c in tiny_configs(tmp_path).items()}
    for gated in (False, True):  # TransformerLens models carry no HF config
        covered[id(load_model(tiny.tiny_hooked(gated), tokenizer=tiny.tiny_tokenizer()).family)] = (
            f"tiny_hooked({gated})"
        )
    missing = [f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES if id(f) not in covered]
    assert not missing, (
        f"families without a tiny model in tests/tiny.py or tests/tiny_gated.py: {missing}; "
        "add a config builder (NAME_config) there"
    )


def test_the_tiny_families_lists_are_derived_from_the_builders():
    # tiny.FAMILIES (the invariant tests' list) is every homogeneous model of tiny.CONFIGS
    assert set(tiny.FAMILIES) <= set(tiny.CONFIGS)
    assert {"qwen3_next", "llama", "gpt2"} <= set(tiny.FAMILIES)
