"""Clinical-aware weighted multimodal DPO on TRL (see docs/method.md and docs/training.md).

`settings` (what a config holds), `dpo_config` (TRL's configuration), `dpo` (the trainer),
`ref_cache` (precomputed reference log-probs), `lora` (PEFT adapters).
"""
