"""The data layer: images, masks, splits, transforms and downloads (see docs/architecture.md)."""
