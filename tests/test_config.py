"""Every shipped run config loads; overrides win; bad values name their field."""

from pathlib import Path

import pytest

from mmedpo.config import load_config
from mmedpo.pipeline.engine import fingerprints
from mmedpo.pipeline.stages import build_stages

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_is_a_demo_config():
    assert "demo.yaml" in [path.name for path in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    config = load_config(path)
    assert config.variants and all(name in config.variants or name == "base" for name in config.claim)


def test_demo_trains_the_ablation_and_states_the_claim():
    config = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert config.variant("dpo-text").pair_kinds == ["text"] and not config.variant("dpo-text").weighted
    assert config.variant("mmedpo").weighted and config.variant("mmedpo").pair_kinds == ["text", "visual"]
    assert config.variant("mmedpo").beta == config.train.beta  # shared settings come from the train section
    assert config.claim == ["mmedpo", "dpo-text-visual", "dpo-text", "base"]
    # The paper's further ablations: one judge against the panel, whole-image noise against the lesion's.
    assert config.variant("mmedpo-one-judge").judges == ["findings"] and len(config.score.judges) > 1
    assert config.variant("mmedpo-whole-image").visual_region == "whole"
    assert config.ablations == [["mmedpo", "mmedpo-one-judge"], ["mmedpo", "mmedpo-whole-image"]]


def test_overrides_win_and_are_parsed_as_yaml():
    config = load_config(None, ["train.beta=0.25", "curate_text.generators=[perturb]", "name=x"])
    assert config.train.beta == 0.25 and config.curate_text.generators == ["perturb"] and config.name == "x"


def test_a_setting_changes_only_its_stage_and_the_ones_after_it():
    before = load_config(None, ["variants={a: {}, b: {}}", "claim=[a, base]"])
    after = load_config(None, ["variants={a: {}, b: {beta: 0.3}}", "claim=[a, base]"])
    old, new = fingerprints(build_stages(before), before), fingerprints(build_stages(after), after)
    changed = {name for name in old if old[name] != new[name]}
    assert changed == {"train:b", "eval:b", "report"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.beta=-1", "train.beta"),
        ("curate_text.generators=[gpt5]", "curate_text.generators"),
        ("data.source=dataset", "data.dataset"),
        ("variants={a: {nonsense: 1}}", "unknown train setting"),
        ("claim=[missing, base]", "missing"),
        ("ablations=[[mmedpo, nowhere]]", "nowhere"),
        ("ablations=[[mmedpo]]", "at least two names"),
        ("variants={mmedpo: {visual_region: whole}}", r"visual_region 'whole' is not in curate_visual.regions"),
        ("variants={mmedpo: {judges: [gpt4o]}}", r"judges \['gpt4o'\] must be members of score.judges \['findings'\]"),
        ("curate_visual.regions=[]", "curate_visual.regions"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])
