"""Version guard: the upstream code our TRL overrides replace or rely on is the code they were written against.

The guard is for the versions of constraints.txt, which `make` and CI install: when they are upgraded
there, a failure here names what changed. Then re-read that upstream method, adapt
`mmedpo/training/trl_overrides.py` (or `pairs.py` for the collator), and record the new hash below and
the new versions in `PINNED`; for the recorded DPOConfig names, rewrite
`src/mmedpo/training/trl_fields.json` (the failure message says how). Under other compatible versions
(pyproject.toml's ranges, a user's environment) the checks that read the installed code skip, naming
the versions they need; the behaviour tests of the trainer run under any version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from importlib import metadata, resources
from pathlib import Path

import pytest
from transformers.trainer_utils import SchedulerType
from trl import DPOConfig

from mmedpo.training.settings import SCHEDULERS, TRL_FIELDS_FILE, pinned_dpo_config_fields
from mmedpo.training.trl_overrides import UPSTREAM

PINNED = {"trl": "1.16.0", "transformers": "5.23.0"}
INSTALLED = {package: metadata.version(package) for package in PINNED}
under_the_pins = pytest.mark.skipif(
    INSTALLED != PINNED, reason=f"the guard reads the code of {PINNED} (constraints.txt); installed: {INSTALLED}"
)
CONSTRAINTS = Path(__file__).parent.parent / "constraints.txt"
# sha256 (first 16 hex digits) of `inspect.getsource` of each upstream method, under PINNED.
RECORDED = {
    "trl.trainer.dpo_trainer:DPOTrainer.__init__": "632f447c71dcb043",
    "transformers.trainer:Trainer._validate_args": "b4ffb071298c538d",
    "trl.trainer.dpo_trainer:DPOTrainer._set_signature_columns_if_needed": "71225a628baed4cb",
    "trl.trainer.dpo_trainer:DPOTrainer._precompute_ref_logps": "f2c098c7da6ca701",
    "trl.trainer.dpo_trainer:DPOTrainer.compute_ref_log_probs": "90611af9cbadb8ec",
    "trl.trainer.dpo_trainer:DPOTrainer._compute_loss": "5e58a1699e0d76cd",
    "transformers.trainer:Trainer._load_from_checkpoint": "a2804e8d93a297e3",
    "trl.trainer.dpo_trainer:DataCollatorForVisionPreference.torch_call": "23aee862202752ab",
}


def upstream(reference: str):
    module, qualified = reference.split(":")
    target = importlib.import_module(module)
    for part in qualified.split("."):
        target = getattr(target, part)
    return target


def source_hash(reference: str) -> str:
    return hashlib.sha256(inspect.getsource(upstream(reference)).encode()).hexdigest()[:16]


def test_pinned_versions_are_the_constraints():
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines() if "==" in line)
    constrained = {package: pins.get(package) for package in PINNED}
    assert constrained == PINNED, (
        f"constraints.txt pins {constrained}, the TRL overrides were written against {PINNED}: see the docstring"
    )


def test_every_override_is_guarded():
    assert set(UPSTREAM) == set(RECORDED)


@under_the_pins
@pytest.mark.parametrize("reference", sorted(RECORDED))
def test_upstream_method_is_unchanged(reference):
    assert source_hash(reference) == RECORDED[reference], (
        f"{reference} changed upstream (hash {source_hash(reference)}): re-read it and check the override that "
        "replaces or relies on it in mmedpo/training/trl_overrides.py, then record the new hash"
    )


@under_the_pins
def test_recorded_dpo_config_fields_match_trl():
    recorded = json.loads(resources.files("mmedpo.training").joinpath(TRL_FIELDS_FILE).read_text())
    actual = sorted(field.name for field in dataclasses.fields(DPOConfig) if field.init)
    assert recorded["versions"] == PINNED
    assert recorded["dpo_config_fields"] == actual, (
        f"DPOConfig's arguments changed: added {sorted(set(actual) - set(recorded['dpo_config_fields']))}, removed "
        f"{sorted(set(recorded['dpo_config_fields']) - set(actual))}; rewrite {TRL_FIELDS_FILE} with these names"
    )
    assert pinned_dpo_config_fields() == actual  # what train.trl_args is checked against on load


@under_the_pins
def test_scheduler_names_are_transformers():
    assert set(SCHEDULERS) == {scheduler.value for scheduler in SchedulerType}
