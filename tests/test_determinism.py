"""Same inputs, same answer: the stages that could drift from run to run do not."""

from __future__ import annotations

import numpy as np

from chemomech import registration, twin


def test_register_gives_the_same_answer_twice():
    # ITK's multithreaded metric sums in a varying order; register runs it on one thread
    p = twin.make_particle("det", seed=7)
    fixed, moving, _ = twin.pair.simulate_pair(p, rotation_rad=0.2, scale=1.1, mirror=True, rng=1)
    a = registration.register(fixed.values, moving.values)
    b = registration.register(fixed.values, moving.values)
    assert np.array_equal(a.matrix, b.matrix)


def test_register_restores_the_itk_thread_setting():
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    p = twin.make_particle("det", seed=7)
    fixed, moving, _ = twin.pair.simulate_pair(p, rotation_rad=0.1, rng=2)
    registration.register(fixed.values, moving.values)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
