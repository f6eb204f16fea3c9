"""Datasets (a registry with shape metadata) and the loaders that batch and augment them."""
