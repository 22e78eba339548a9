"""Pipeline YAML validation (docs/design.md §6): every mistake is one line naming the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from torch import nn

from tests.support.paths import PIPELINES as PIPELINES_DIR
from tests.support.paths import ROOT
from tests.support.plugin_fakes import AttentionProbe, KeepFirst, plugin, strategy_named
from tokencompress import (
    BudgetError,
    CompatibilityError,
    ConfigError,
    Pipeline,
    Registry,
    Stage,
)
from tokencompress.pipeline.config import json_schema, load_config, parse_config

PIPELINES = sorted(PIPELINES_DIR.glob("*.yaml"))
PLUGIN_PIPELINES = sorted((ROOT / "plugins").glob("*/pipelines/*.yaml"))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def config_error(registry: Registry, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(text, registry)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def pre_prefill(**step: Any) -> str:
    return "name: t\nstages:\n  pre_prefill:\n    - " + json.dumps(step) + "\n"


# -------------------------------------------------------------- file level
def test_yaml_syntax_error_reports_the_line(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ntarget: auto\nstream: fps: 1\nstages: {}\n")
    msg = config_error(registry, str(path))
    assert str(path) in msg and "invalid YAML at line 3" in msg


def test_yaml_bad_indentation_reports_the_line(registry: Registry) -> None:
    text = "name: t\nstages:\n  pre_prefill:\n    - {strategy: stc_pruner}\n   - {strategy: stc_pruner}\n"
    assert "line 5" in config_error(registry, text)


def test_missing_file(registry: Registry, tmp_path: Path) -> None:
    assert "not found" in config_error(registry, str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(registry: Registry, text: str) -> None:
    assert "top level must be a mapping" in config_error(registry, "# pipeline\n" + text)


def test_unknown_top_level_key_suggests(registry: Registry) -> None:
    msg = config_error(registry, "name: t\nstage:\n  pre_prefill: []\n")
    assert "unknown key 'stage'" in msg and "did you mean 'stages'" in msg


def test_unknown_stage_suggests(registry: Registry) -> None:
    msg = config_error(registry, "name: t\nstages:\n  pre_prefil: []\n")
    assert "unknown stage 'pre_prefil'" in msg and "did you mean 'pre_prefill'" in msg


def test_unknown_target_suggests(registry: Registry) -> None:
    msg = config_error(registry, "target: llava_onevison\n")
    assert msg.startswith("target:") and "did you mean 'llava_onevision'" in msg


# ---------------------------------------------------------------- strategies
def test_unknown_strategy_names_closest(registry: Registry) -> None:
    msg = config_error(registry, pre_prefill(strategy="stc_prunr", tokens_per_frame=60))
    assert msg.startswith("stages.pre_prefill[0].strategy: unknown strategy 'stc_prunr'")
    assert "did you mean 'stc_pruner'" in msg and "known: " in msg


def test_missing_strategy_key(registry: Registry) -> None:
    assert "missing 'strategy'" in config_error(registry, pre_prefill(tokens_per_frame=60))


def test_strategy_under_the_wrong_stage_names_the_right_one(registry: Registry) -> None:
    text = "stages:\n  pre_vit_block:\n    - {strategy: stc_pruner, tokens_per_frame: 60}\n"
    msg = config_error(registry, text)
    assert "stages.pre_vit_block[0]" in msg and "runs at stage 'pre_prefill'" in msg
    assert "move it under stages.pre_prefill" in msg


def test_unknown_param_names_the_allowed_keys(registry: Registry) -> None:
    msg = config_error(registry, pre_prefill(strategy="stc_pruner", tokens_per_fram=60))
    assert msg.startswith("stages.pre_prefill[0].tokens_per_fram: unknown key 'tokens_per_fram'")
    assert "did you mean 'tokens_per_frame'" in msg
    allowed = msg.split("allowed: ")[1]
    assert set(allowed.split(", ")) == set(registry.strategy("stc_pruner").Params.model_fields)


@pytest.mark.parametrize(
    ("step", "path"),
    [
        ({"strategy": "stc_pruner", "tokens_per_frame": 0}, "stages.pre_prefill[0].tokens_per_frame"),
        ({"strategy": "stc_pruner", "tokens_per_frame": "many"}, "stages.pre_prefill[0].tokens_per_frame"),
        ({"strategy": "stc_pruner", "channel_keep_ratio": 1.5}, "stages.pre_prefill[0].channel_keep_ratio"),
    ],
)
def test_value_out_of_range_names_the_dotted_path(registry: Registry, step: dict, path: str) -> None:
    msg = config_error(registry, pre_prefill(**step))
    assert msg.startswith(path + ": ") and "got" in msg


def test_second_step_is_indexed(registry: Registry) -> None:
    text = (
        "stages:\n  pre_prefill:\n    - {strategy: stc_pruner, tokens_per_frame: 60}\n"
        "    - {strategy: stc_pruner, tokens_per_frame: -3}\n"
    )
    assert config_error(registry, text).startswith("stages.pre_prefill[1].tokens_per_frame: ")


@pytest.mark.parametrize("fps", [0, -1, "fast"])
def test_stream_fps_must_be_positive(registry: Registry, fps: Any) -> None:
    msg = config_error(registry, f"stream: {{frames_per_chunk: 1, fps: {fps}}}\n")
    assert msg.startswith("stream.fps: ")


def test_stream_unknown_key(registry: Registry) -> None:
    msg = config_error(registry, "stream: {frames_per_chnk: 2}\n")
    assert "unknown key 'frames_per_chnk'" in msg and "did you mean 'frames_per_chunk'" in msg


def test_valid_config_round_trips(registry: Registry) -> None:
    cfg = load_config(ROOT / "pipelines" / "stc.yaml", registry)
    assert [s.name for s in cfg.strategies(Stage.PRE_VIT_BLOCK)] == ["stc_cacher"]
    assert cfg.strategies(Stage.PRE_PREFILL)[0].params.tokens_per_frame == 60
    again = parse_config(cfg.to_dict(), registry)
    assert again.to_dict() == cfg.to_dict()


# -------------------------------------------------- checks against the model
def bind_error(model: nn.Module, data: dict, registry: Registry | None = None) -> Exception:
    pipe = Pipeline.from_dict(data, registry)
    with pytest.raises((ConfigError, CompatibilityError)) as exc:
        pipe.bind(model)
    assert "\n" not in str(exc.value)
    return exc.value


def test_budget_larger_than_a_frame_is_refused_at_bind(tiny_llava_ov: nn.Module) -> None:
    data = {"stages": {"pre_prefill": [{"strategy": "stc_pruner", "tokens_per_frame": 17}]}}
    err = bind_error(tiny_llava_ov, data)
    assert isinstance(err, BudgetError)
    assert "17" in str(err) and "16 tokens a frame has" in str(err) and "at most 16" in str(err)
    data["stages"]["pre_prefill"][0]["tokens_per_frame"] = 16
    Pipeline.from_dict(data).bind(tiny_llava_ov)  # the whole frame is fine


def test_unmet_need_names_strategy_target_and_need(tiny_llava_ov: nn.Module) -> None:
    reg = Registry(plugins=[plugin("pkg-probe", [AttentionProbe])])
    err = bind_error(tiny_llava_ov, {"stages": {"post_vit": [{"strategy": "attention_probe"}]}}, reg)
    assert isinstance(err, CompatibilityError)
    msg = str(err)
    assert "stages.post_vit[0]" in msg and "'attention_probe'" in msg and "'llava_onevision'" in msg
    assert "needs attention" in msg


def test_count_changing_strategy_at_post_vit_is_refused_on_llava(tiny_llava_ov: nn.Module) -> None:
    post_vit_pruner = strategy_named("post_vit_pruner")
    post_vit_pruner.stage = Stage.POST_VIT
    reg = Registry(plugins=[plugin("pkg-pv", [post_vit_pruner])])
    err = bind_error(tiny_llava_ov, {"stages": {"post_vit": [{"strategy": "post_vit_pruner"}]}}, reg)
    assert isinstance(err, CompatibilityError)
    assert "changes the token count at post_vit" in str(err) and "pre_prefill" in str(err)


def test_unknown_target_option_is_refused(tiny_llava_ov: nn.Module) -> None:
    err = bind_error(tiny_llava_ov, {"target_options": {"newlin": True}})
    assert isinstance(err, ConfigError)
    assert str(err).startswith("target_options.newlin: unknown key 'newlin'")
    assert "did you mean 'newline'" in str(err)


def test_target_option_of_wrong_type(tiny_llava_ov: nn.Module) -> None:
    err = bind_error(tiny_llava_ov, {"target_options": {"newline": "sometimes"}})
    assert str(err).startswith("target_options.newline: ")


# -------------------------------------------------------------- JSON Schema
def _strategy_consts(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        const = node.get("properties", {}).get("strategy", {}).get("const")
        if const is not None:
            found.add(const)
        for value in node.values():
            found |= _strategy_consts(value)
    elif isinstance(node, list):
        for value in node:
            found |= _strategy_consts(value)
    return found


def _discriminators(node: Any) -> list[dict]:
    if isinstance(node, dict):
        here = [node["discriminator"]] if "discriminator" in node else []
        return here + [d for v in node.values() for d in _discriminators(v)]
    if isinstance(node, list):
        return [d for v in node for d in _discriminators(v)]
    return []


def test_json_schema_covers_every_strategy() -> None:
    # a second pre_prefill strategy guarantees a discriminated union whatever else is installed
    reg = Registry(plugins=[plugin("pkg-extra", [KeepFirst])])
    schema = json_schema(reg)
    json.dumps(schema)
    assert _strategy_consts(schema) == set(reg.strategies)
    discs = _discriminators(schema)
    assert discs and all(d["propertyName"] == "strategy" for d in discs)
    assert {"keep_first", "stc_pruner"} <= {name for d in discs for name in d["mapping"]}
    assert set(schema["properties"]) == {"name", "target", "target_options", "stream", "stages"}
    assert schema.get("additionalProperties") is False


def test_json_schema_validates_pipeline_files(registry: Registry) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in PIPELINES:
        validator.validate(yaml.safe_load(path.read_text()))
    stc = yaml.safe_load((ROOT / "pipelines" / "stc.yaml").read_text())
    bad_name = json.loads(json.dumps(stc))
    bad_name["stages"]["pre_prefill"][0]["strategy"] = "stc_prunr"
    bad_key = json.loads(json.dumps(stc))
    bad_key["stagez"] = bad_key.pop("stages")
    bad_value = json.loads(json.dumps(stc))
    bad_value["stages"]["pre_prefill"][0]["tokens_per_frame"] = 0
    for doc in (bad_name, bad_key, bad_value):
        assert not validator.is_valid(doc)


# ------------------------------------------------------------ shipped files
@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_parse(registry: Registry, path: Path) -> None:
    cfg = load_config(path, registry)
    assert cfg.name and cfg.stream.fps > 0


@pytest.mark.parametrize("path", PLUGIN_PIPELINES, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_plugin_pipelines_parse(registry: Registry, path: Path) -> None:
    package = path.parts[-3]
    if not any(r.package == package for r in registry.strategies.values()):
        pytest.skip(f"pip install -e plugins/{package}")
    load_config(path, registry)
