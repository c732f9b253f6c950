"""signfeat trainer: sign adapter + LoRA LLM training from feature shards, BLEU / ROUGE-L evaluation."""
