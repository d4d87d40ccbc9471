"""LoRA fine-tuning, run as a subprocess of the bot: ``python -m inference.finetune.train job.json``."""
