"""Fine-tuning and the frozen-versus-fine-tuned comparison, built from `extract` and `classify`."""
