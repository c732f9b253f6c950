"""signfeat: manifests."""
