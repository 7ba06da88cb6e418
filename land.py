import sys, numpy as np
from scipy import ndimage
from chemomech import twin, registration
from chemomech.twin import pair
from chemomech.registration import Registration
k=int(sys.argv[1])
p = twin.make_particle(f"case{k}", batch=("biphasic", "li_rich", "li_poor")[k % 3], seed=100 + k)
par = pair.random_pair_parameters(1000 + k, max_rotation_rad=np.pi); par.pop("contrast")
f, m, truth = pair.simulate_realistic_pair(p, **par, rng=k)
import SimpleITK as sitk
from chemomech.registration import _content, _to_sitk, _method, _sitk_affine, _DILATE
fa, ma = f.values, m.values
fm, mm = registration.particle_mask(fa), registration.particle_mask(ma)
fi = _to_sitk(_content(fa, fm, 1.0, 10.0)); mi = _to_sitk(_content(ma, mm, 1.0, 10.0))
mask = sitk.GetImageFromArray(ndimage.binary_dilation(fm, iterations=_DILATE).astype(np.uint8))
r = _method(mask, bins=32, sampling=1.0, seed=0, iterations=1, shrink=(1,), sigmas=(0,))
c = np.argwhere(fm).mean(0)
for dth in np.arange(-10, 11, 2):
    th = np.radians(dth); R = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    T = np.eye(3); T[:2,:2] = R; T[:2,2] = c - R @ c
    h = truth.matrix @ T
    r.SetInitialTransform(_sitk_affine(h, c))
    print(dth, round(-r.MetricEvaluate(fi, mi), 4))
