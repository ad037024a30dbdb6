"""Model cards: every model weighted DPO trains gets one, LoRA adapters with the right fields; no unasked push."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from mmedpo.training.dpo import train_weighted_dpo
from mmedpo.training.model_card import base_model_name, model_card, write_model_card
from mmedpo.training.settings import DPOSettings
from test_training import make_pair


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


@pytest.fixture
def no_hub(monkeypatch):
    """Every Hub upload fails the test: nothing may be pushed unless asked."""

    def refuse(*args, **kwargs):
        raise AssertionError("pushed to the Hub without push_to_hub")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "upload_folder", refuse)


def linked_base(tmp_path, tiny_vlm_dir):
    """The tiny model as a run's models/base."""
    base = tmp_path / "models" / "base"
    base.parent.mkdir()
    base.symlink_to(tiny_vlm_dir, target_is_directory=True)
    return base


def pairs():
    return [
        make_pair(0),
        make_pair(1, rejected_image="right.png"),
        make_pair(2),
        make_pair(3, rejected_image="dark.png"),
    ]


def test_a_full_fine_tune_gets_a_card_that_the_eval_metrics_complete(tiny_vlm_dir, image_root, tmp_path, no_hub):
    base = linked_base(tmp_path, tiny_vlm_dir)
    out = tmp_path / "models" / "mmedpo"
    settings = DPOSettings(per_device_train_batch_size=2, max_steps=1, beta=0.2)
    train_weighted_dpo(base, pairs()[:3], [image_root], out, settings, data_description="Pairs from SynthMed.")

    card = ModelCard.load(out / "README.md")
    # A local base is named in the text, relative (the run folder can be copied or moved), and kept out of the
    # metadata: the Hub refuses a card whose base_model is not a model id.
    assert card.data.base_model is None and "`../base` (a local folder, relative to this card's folder)." in card.text
    assert (card.data.pipeline_tag, card.data.library_name) == ("image-text-to-text", "transformers")
    assert card.data.eval_results is None
    text = card.text
    assert "research artefact, not for clinical use" in text
    assert "Pairs from SynthMed." in text
    assert "| text | 2 |" in text and "| visual | 1 |" in text and "| all | 3 |" in text
    assert "beta: 0.2" in text and "Optimizer steps: 1," in text
    assert "Not evaluated yet" in text
    assert not (out / "adapter").exists()

    metrics = {"closed_accuracy": 0.625, "bleu_4": 0.125, "n_closed": 8, "protocol": "mmedpo"}
    (written,) = write_model_card(out, metrics, dataset="SynthMed", split="test")
    card = ModelCard.load(written)
    found = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert found == {"closed_accuracy": 0.625, "bleu_4": 0.125}
    assert {result.dataset_split for result in card.data.eval_results} == {"test"}
    assert "| closed_accuracy | 0.6250 |" in card.text and "8 closed questions" in card.text
    assert "Not evaluated yet" not in card.text and "Optimizer steps: 1," in card.text  # the rest unchanged


def test_a_pushed_model_gets_its_test_metrics_on_the_hub_once_evaluated(
    tiny_vlm_dir, image_root, tmp_path, monkeypatch
):
    from mmedpo.config import load_config
    from mmedpo.layout import RunLayout
    from mmedpo.pipeline import eval_stages

    hub = {}  # what the fake Hub holds: path in the repository -> text
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)

    def accept(place, text):
        # As the Hub's metadata check: a base_model must be a model id, not a local path ("../base").
        base_model = ModelCard(text).data.base_model
        assert base_model is None or re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base_model) and ".." not in base_model, place
        hub[place] = text

    def upload_folder(self, repo_id, folder_path, **kwargs):
        for card in Path(folder_path).rglob("README.md"):
            accept(card.relative_to(folder_path).as_posix(), card.read_text())

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        assert repo_id == "me/pushed"
        accept(path_in_repo, Path(path_or_fileobj).read_text())

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "upload_file", upload_file)
    config = load_config(
        None,
        [f"runs_dir={tmp_path}", "name=r", "variants={pushed: {push_to_hub: true, hub_model_id: me/pushed}}",
         "claim=[pushed, base]", "ablations=[]"],
    )  # fmt: skip
    layout = RunLayout.of(config)
    layout.dir.mkdir(parents=True)
    base = linked_base(layout.dir, tiny_vlm_dir)
    # A merged LoRA: the merged model and, beside it, the adapter with a card of its own.
    settings = DPOSettings(per_device_train_batch_size=2, max_steps=1, push_to_hub=True, hub_model_id="me/pushed",
                           use_peft=True, lora_r=4, merge_lora=True)  # fmt: skip
    train_weighted_dpo(base, pairs()[:2], [image_root], layout.model("pushed"), settings)
    assert set(hub) == {"README.md", "adapter/README.md"}
    assert all("Not evaluated yet" in card for card in hub.values())  # pushed when training ended
    eval_stages._refresh_model_card(layout, config, "pushed", {"closed_accuracy": 0.625, "n_closed": 8})
    for place, card in hub.items():
        assert "| closed_accuracy | 0.6250 |" in card and "Not evaluated yet" not in card, place
        assert card == (layout.model("pushed") / place).read_text()


@pytest.mark.slow
def test_a_lora_adapter_card_names_its_base_relatively_and_is_a_peft_image_text_to_text_card(
    tiny_vlm_dir, image_root, tmp_path, no_hub
):
    base = linked_base(tmp_path, tiny_vlm_dir)
    out = tmp_path / "models" / "lora"
    settings = DPOSettings(per_device_train_batch_size=2, max_steps=1, use_peft=True, lora_r=4, merge_lora=True)
    train_weighted_dpo(base, pairs(), [image_root], out, settings)

    adapter = ModelCard.load(out / "adapter" / "README.md")  # PEFT's template replaced
    assert adapter.data.base_model is None and "`../../base` (a local folder" in adapter.text
    assert 'AutoModelForImageTextToText.from_pretrained("../../base")' in adapter.text
    assert (adapter.data.library_name, adapter.data.pipeline_tag) == ("peft", "image-text-to-text")
    assert "lora" in adapter.data.tags
    assert str(tmp_path) not in adapter.content  # no absolute local path
    assert "PeftModel.from_pretrained" in adapter.text and "not for clinical use" in adapter.text
    merged = ModelCard.load(out / "README.md")
    assert (merged.data.library_name, merged.data.base_model) == ("transformers", None)
    assert "`../base` (a local folder" in merged.text
    assert "merged into its base" in merged.text
    assert json.loads((out / "train_log.json").read_text())["pairs_by_kind"] == {"text": 2, "visual": 2}


def test_a_hub_model_is_named_by_its_id_and_a_local_one_by_a_relative_path(tmp_path):
    (tmp_path / "base").mkdir()
    assert base_model_name("llava-hf/llava-1.5-7b-hf", tmp_path / "out") == "llava-hf/llava-1.5-7b-hf"
    assert base_model_name(tmp_path / "base", tmp_path / "runs" / "out") == "../../base"
    assert base_model_name(tmp_path / "base", tmp_path) == "./base"
    # Only an id is metadata: the Hub links the model to it.
    assert model_card("m", {}, "llava-hf/llava-1.5-7b-hf", adapter=True, merged=False).data.base_model == (
        "llava-hf/llava-1.5-7b-hf"
    )
    assert model_card("m", {}, "../base", adapter=False, merged=False).data.base_model is None


def test_push_to_hub_needs_a_repository_and_is_not_a_trl_argument():
    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        DPOSettings(push_to_hub=True)
    with pytest.raises(ValueError, match="set it as the train setting 'push_to_hub'"):
        DPOSettings(trl_args={"push_to_hub": True})
    assert DPOSettings().push_to_hub is False
