"""DDIM on the variance-preserving path: the config, the per-``set_timesteps`` plan, and the three
schedulers (sampling, inverse, parallel)."""
