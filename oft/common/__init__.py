"""Helpers every layer may use: atomic files, images, safe loading, data/model roots, seeds, timing."""
