"""Clinical-aware weighted multimodal DPO on TRL (see docs/method.md and docs/training.md).

`settings` (the settings a config holds, TRL's names), `dpo_config` (TRL's configuration),
`pairs` (the dataset and its collator), `dpo` (the trainer and its entry points),
`trl_overrides` (where it replaces TRL's private methods, and why), `ref_cache`
(precomputed reference log-probs), `lora` (PEFT adapters).
"""
