"""diffusers' surface: the config mixin, ``scheduler_config.json`` I/O, the step output and the optional
``SchedulerMixin`` base. Nothing here imports diffusers unless it is installed."""
