from ddim_sched import DDIMScheduler


def test_leading_schedule_with_offset_matches_reference():
    # docs/concepts.md (timestep spacings): steps_offset=1 with leading, S=5 -> [801, 601, 401, 201, 1].
    scheduler = DDIMScheduler(steps_offset=1)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]


def test_config_view_survives_copy_and_pickle():
    import copy
    import pickle

    config = DDIMScheduler(timestep_spacing="trailing").config
    for clone in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config and clone.timestep_spacing == "trailing"
        assert type(clone) is type(config)
