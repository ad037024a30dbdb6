"""Every place the weighted trainer replaces or leans on private machinery of TRL and transformers, and why.

Written against TRL 1.16.0 and transformers 5.23.0 (pinned in pyproject.toml). `UPSTREAM`
lists the upstream code each override replaces or relies on; tests/test_trl_pin.py hashes
its source and fails, naming the method, when another version changes it. Then re-read
that method, adapt the override below, and record the new hash.

`TRLOverrides` is the DPOTrainer that `WeightedDPOTrainer` (mmedpo.training.dpo) builds
on: it routes MMedPO's columns to the loss, precomputes reference log-probs for image
data, and resumes full-model checkpoints. The loss itself is `preference_loss`, which the
subclass defines.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers.core_model_loading import revert_weight_conversion
from trl import DPOTrainer
from trl.models import prepare_deepspeed

from mmedpo.training import ref_cache
from mmedpo.training.pairs import PAIR_BATCH_KEYS, PAIR_COLUMNS, REF_COLUMNS, routing

# Upstream code the overrides below replace (R) or depend on (D), as "module:qualified name".
UPSTREAM = (
    "trl.trainer.dpo_trainer:DPOTrainer.__init__",  # D: order of the image check, _validate_args, the reference
    "transformers.trainer:Trainer._validate_args",  # R: gives the hidden precompute flag back
    "trl.trainer.dpo_trainer:DPOTrainer._set_signature_columns_if_needed",  # R: keeps MMedPO's columns
    "trl.trainer.dpo_trainer:DPOTrainer._precompute_ref_logps",  # R: image data, own rejected images, disk cache
    "trl.trainer.dpo_trainer:DPOTrainer.compute_ref_log_probs",  # D: the reference pass and the live reference
    "trl.trainer.dpo_trainer:DPOTrainer._compute_loss",  # R: the weighted loss (preference_loss)
    "transformers.trainer:Trainer._load_from_checkpoint",  # R: full-model checkpoints under the model's own keys
    "trl.trainer.dpo_trainer:DataCollatorForVisionPreference.torch_call",  # D: one images call (pairs.py)
)


class TRLOverrides(DPOTrainer):
    """DPOTrainer with the private methods MMedPO needs replaced (each says why); the loss is `preference_loss`."""

    def __init__(self, model, ref_model=None, args=None, **kwargs):
        # Why: TRL refuses precompute_ref_log_probs for image datasets, and without it loads a frozen copy as the
        # reference. So the flag is hidden from TRL's image check and given back (in `_validate_args`, which
        # Trainer.__init__ calls in between) before TRL decides about the copy; TRL then keeps no reference model
        # and calls `_precompute_ref_logps`, which this class implements for images.
        self._precompute_requested = args.precompute_ref_log_probs
        args.precompute_ref_log_probs = False
        try:
            super().__init__(model, ref_model, args, **kwargs)
        finally:
            args.precompute_ref_log_probs = self._precompute_requested
        self.precompute_ref_logps = self._precompute_requested
        if self.precompute_ref_logps and ref_model is None and self.ref_model is not None:
            raise RuntimeError("a reference model was loaded although its log-probs are precomputed")
        # Why: TRL builds its collator itself; the wrapper adds each pair's weight and rejected image.
        self.data_collator = routing(self.data_collator)

    def _validate_args(self):
        # Why: see __init__; Trainer.__init__ calls this after TRL's image check and before the reference is chosen.
        self.args.precompute_ref_log_probs = self._precompute_requested
        super()._validate_args()

    def _set_signature_columns_if_needed(self):
        # Why: Trainer drops the columns its model's forward does not name, ours among them, before the collator.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, *PAIR_COLUMNS, *REF_COLUMNS]

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """`dataset` with its reference log-probs as columns: read from the cache, or computed once and cached.

        Why: upstream's version refuses image data, gives the rejected sequence the chosen image, and caches in the
        datasets cache keyed by an in-memory fingerprint; this one passes each pair's own rejected image and keys
        a file by the model's weights, the pairs' content and the tokenisation settings (ref_cache).
        """
        settings = {
            "max_length": self.args.max_length,
            "truncation_mode": self.args.truncation_mode,
            "chat_template": getattr(self.processing_class, "chat_template", None),
            "precision": self.accelerator.mixed_precision,
        }
        # Under ZeRO-3 every rank hashes its own shard: all ranks use rank 0's file name.
        path = [ref_cache.cache_path(self.args.reference_cache_dir, self._precompute_model_hash, dataset, settings)]
        broadcast_object_list(path, from_process=0)
        path = path[0]
        if not path.exists():
            chosen, rejected = self._reference_pass(dataset, batch_size)
            if self.accelerator.is_main_process:
                ref_cache.save_ref_logps(path, chosen, rejected)
            self.accelerator.wait_for_everyone()
        chosen, rejected = ref_cache.load_ref_logps(path, len(dataset))
        return ref_cache.add_ref_columns(dataset, chosen, rejected)

    def _reference_pass(self, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the reference over `dataset`, with each pair's rejected image (as TRL's, for images)."""
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=routing(self.data_collator),
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        # Before `train`, DeepSpeed has not placed the parameters yet: TRL wraps the model in an inference engine.
        if self.ref_model is None and self.is_deepspeed_enabled:
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in loader:
            batch = {key: value for key, value in batch.items() if key not in PAIR_BATCH_KEYS}
            batch_chosen, batch_rejected = self.compute_ref_log_probs(model, batch)
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics((batch_chosen, batch_rejected))
            chosen.append(batch_chosen.float().cpu())
            rejected.append(batch_rejected.float().cpu())
        return torch.cat(chosen), torch.cat(rejected)

    def _compute_loss(self, model, inputs, return_outputs):
        # Why: upstream's loss has no per-pair weight and no rejected image of its own; TRL's `compute_loss` calls
        # this private hook, so the weighted loss takes its place.
        return self.preference_loss(model, inputs, return_outputs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Why: transformers 5.23 saves a checkpoint in the model's original key format (save_pretrained reverts the
        # model's key renames, e.g. LLaVA's) but resumes with a raw load_state_dict(strict=False), which then loads
        # nothing, silently. For a plain single-process model, load it under the model's own names.
        model = model if model is not None else self.model
        files = _checkpoint_files(Path(resume_from_checkpoint))
        if is_peft_model(model) or self.is_deepspeed_enabled or self.is_fsdp_enabled or not files:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        own = model.state_dict()
        own_name = {id(tensor): name for name, tensor in own.items()}
        saved_as = {name: own_name[id(t)] for name, t in revert_weight_conversion(model, dict(own)).items()}
        state = {saved_as.get(name, name): tensor for file in files for name, tensor in load_file(file).items()}
        model.load_state_dict(state, strict=True)


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    """The safetensors weight files of a full-model checkpoint (one file or an index of shards)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / "model.safetensors"
    return [single] if single.exists() else []
