"""The registry of names users type: every entry loads, and a typo fails at config load naming its setting."""

import subprocess
import sys

import pytest

from mmedpo.config import load_config
from mmedpo.registry import GENERATORS, JUDGES, LOCALIZERS, NORMALISERS, PROTOCOLS, READERS, Registry, unknown_name

REGISTRIES = [READERS, GENERATORS, LOCALIZERS, JUDGES, NORMALISERS, PROTOCOLS]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.kind)
def test_every_entry_loads_and_names_itself(registry):
    for name in registry.names():
        component = registry.load(name)
        assert callable(component), f"{registry.kind} {name!r}"
        # Components that carry a name (generators, localizers, judges) carry the one they are registered under:
        # it goes into each pair's provenance and the judge cache key.
        assert getattr(component, "name", name) == name


def test_unknown_names_suggest_the_closest_and_list_all():
    with pytest.raises(ValueError, match=r"^unknown judge 'findngs'; did you mean 'findings'\? valid: findings, chat"):
        JUDGES.load("findngs")
    # Nothing close: no guess, only the valid names.
    assert str(unknown_name("colour", "purple", ["red", "green"], "paint.colour")) == (
        "paint.colour: unknown colour 'purple'; valid: red, green"
    )
    # An entry is "module:attribute", imported when loaded, or the object itself.
    numbers = Registry("number type", {"fraction": "fractions:Fraction", "int": int})
    assert numbers.load("fraction").__name__ == "Fraction" and numbers.load("int") is int and "float" not in numbers


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.dataset=vqarad"], "data.dataset: unknown dataset 'vqarad'; did you mean 'vqa-rad'?"),
        (["curate_text.generators=[target, purturb]"], "curate_text.generators: unknown generator 'purturb'; did you"),
        (["curate_visual.localizer=gradcm"], "curate_visual.localizer: unknown localizer 'gradcm'; did you mean 'gr"),
        (["score.judges=[findngs]"], "score.judges: unknown judge 'findngs'; did you mean 'findings'? valid: findin"),
        (
            ["score.judges=[gpt4o]", "score.judge_options={gpt4o: {judge: chta, model: gpt-4o}}"],
            "score.judge_options.gpt4o.judge: unknown judge 'chta'; did you mean 'chat'?",
        ),
        (["score.normaliser=meanone"], "score.normaliser: unknown normaliser 'meanone'; did you mean 'mean-one'?"),
        (["eval.protocol=llava_med"], "eval.protocol: unknown evaluation protocol 'llava_med'; did you mean 'llava-m"),
        (["eval.prompts={vqa: '{question}', reprot: '{question}'}"], "eval.prompts: unknown task 'reprot'; did you"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_a_typo_in_a_named_setting_fails_at_load(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(None, overrides)
    assert f"config (defaults): {message}" in str(error.value)


def test_a_component_added_from_python_is_valid_in_a_config(monkeypatch):
    monkeypatch.setitem(JUDGES.entries, "mine", "mmedpo.scoring.judges:FindingsJudge")
    assert load_config(None, ["score.judges=[findings, mine]"]).score.judges == ["findings", "mine"]


def test_loading_a_config_imports_no_heavy_library():
    heavy = ["torch", "transformers", "trl", "aiohttp", "numpy"]
    code = f"import sys, mmedpo.config; print([m for m in {heavy} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
