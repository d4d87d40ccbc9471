"""The learning loop: history pruning, training datasets, fine-tune runs, the quality gate and LoRA versions.

Nothing here imports torch: training runs in a subprocess (``python -m inference.finetune.train job.json``).
"""
