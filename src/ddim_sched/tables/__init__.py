"""Pure functions of a configuration: β schedules (:mod:`.betas`), the timesteps a sampler visits
(:mod:`.spacing`) and the noise levels of flow-matching schedules (:mod:`.flow_sigmas`)."""
