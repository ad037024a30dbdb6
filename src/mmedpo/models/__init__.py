"""Vision-language models: the tiny LLaVA, loading and generating with any HF VLM, supervised fine-tuning."""
