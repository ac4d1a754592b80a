"""Recipes people bring to a sampling loop: guidance rescale and latent interpolation."""
