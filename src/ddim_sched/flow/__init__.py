"""DDIM on the rectified-flow path: the config, the plan, the update and ``FlowMatchDDIMScheduler``."""
