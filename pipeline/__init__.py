"""signfeat: pipeline."""
