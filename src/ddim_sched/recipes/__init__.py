"""Recipes people bring to a sampling loop: guidance rescale, latent interpolation, CFG++, guidance in a noise
interval, exposure-bias ε scaling, and the noise level of a timestep they read."""
