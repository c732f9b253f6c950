"""signfeat shards: WebDataset tars of feature samples, their store (local or S3), reader, verify, stats."""
