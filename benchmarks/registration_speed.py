"""Time and accuracy of chemomech.registration.register on simulated pairs (one core).

Prints, per seeded case, the geometry, the target registration error (TRE, in
fixed-image pixels) over every fixed-mask pixel, the Dice of the particle masks
and the CPU time of `register` (one thread; CPU time, because the machine may be
shared); and the time relative to a baseline run side by side in the same
process: one plain SimpleITK Mattes-MI affine registration (centred-moments
initialiser, no mirror/rotation search) of the same pair.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/registration_speed.py [n_cases] [--realistic [--stand-in]]

With ``--realistic`` the pairs are real-looking (:func:`chemomech.twin.pair.simulate_realistic_pair`:
holes, film, neighbour, X-ray blur, any rotation) and the TRE is taken over the *true* fixed particle
mask; the particle's dark-field signal is the annular virtual dark field of the dynamical 4D-STEM twin
(:func:`chemomech.evaluate.dynamical_dark_field`, 64 x 64 scan, ~5-25 s per particle), or with
``--stand-in`` the drawn stand-in texture (the harder stress case).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import SimpleITK as sitk

from chemomech import evaluate, registration, twin

sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)  # report single-core times


def baseline(fixed: np.ndarray, moving: np.ndarray, points: np.ndarray) -> tuple[float, np.ndarray]:
    """A plain single-start Mattes-MI affine registration: CPU time (s) and the moving positions of `points`."""
    t0 = time.process_time()
    f = sitk.GetImageFromArray(fixed.astype(np.float32))
    m = sitk.GetImageFromArray(moving.astype(np.float32))
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(2),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.5, 0)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, 0.6, 1e-8, estimateLearningRate=r.Once,
                                               maximumStepSizeInPhysicalUnits=1.0)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SetInitialTransform(init, inPlace=True)
    r.Execute(f, m)
    dt = time.process_time() - t0
    mapped = np.array([init.TransformPoint((float(c), float(r_))) for r_, c in points])  # SimpleITK is (x, y)
    return dt, mapped[:, ::-1]


def main(n_cases: int = 12, realistic: bool = False, dynamical: bool = True) -> None:
    import pandas as pd

    df_images = [evaluate.dynamical_dark_field(k) for k in range(n_cases)] if realistic and dynamical else None
    # same seeds as the acceptance tests and the chapter
    table = evaluate.tre_trials(n_cases, realistic=realistic, df_images=df_images)
    base, base_tre = [], []
    for k in range(n_cases):  # the same pairs again, for the side-by-side baseline
        p = twin.make_particle(f"case{k}", batch=("biphasic", "li_rich", "li_poor")[k % 3], seed=100 + k)
        if realistic:
            par = twin.pair.random_pair_parameters(1000 + k, max_rotation_rad=np.pi)
            par.pop("contrast")
            f, m, truth = twin.pair.simulate_realistic_pair(p, **par, rng=k,
                                                            df_image=None if df_images is None else df_images[k])
            pts = np.argwhere(truth.fixed_mask).astype(float)
        else:
            f, m, truth = twin.pair.simulate_pair(p, **twin.pair.random_pair_parameters(1000 + k), rng=k)
            pts = np.argwhere(registration.particle_mask(f.values)).astype(float)
        dt, mapped = baseline(f.values, m.values, pts)
        base.append(dt)
        base_tre.append(truth.target_registration_error(mapped, pts).mean())
    table["baseline_seconds"] = base
    table["baseline_tre_mean_px"] = base_tre
    table["ratio"] = table.cpu_seconds / table.baseline_seconds
    with pd.option_context("display.width", 180, "display.max_columns", 20):
        print(table.drop(columns=[c for c in ("error",) if c in table]).round(3))
    if realistic:
        print("dark field: " + ("dynamical 4D-STEM twin (virtual ADF)" if dynamical else "drawn stand-in texture"))
        print(f"raised: {int((table.error != '').sum())} of {n_cases}; min Dice of the true masks under the "
              f"estimate {table.dice_truth.min():.3f}")
    print(f"mean of per-case mean TRE {table.tre_mean_px.mean():.3f} px; worst case mean "
          f"{table.tre_mean_px.max():.3f} px; worst landmark {table.tre_max_px.max():.3f} px; "
          f"min Dice {table.dice.min():.3f}")
    print(f"register: median {table.cpu_seconds.median():.2f} s, max {table.cpu_seconds.max():.2f} s CPU per pair "
          "on one thread; "
          f"median {table.ratio.median():.1f}x a single plain SimpleITK affine registration")
    print(f"plain SimpleITK affine (no mask, no mirror/rotation search): mean TRE "
          f"{table.baseline_tre_mean_px.mean():.1f} px, {int((table.baseline_tre_mean_px > 1.5).sum())} of "
          f"{n_cases} cases with mean TRE > 1.5 px")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(args[0]) if args else 12, realistic="--realistic" in sys.argv[1:],
         dynamical="--stand-in" not in sys.argv[1:])
