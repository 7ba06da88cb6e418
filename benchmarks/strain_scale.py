"""Out-of-core strain mapping: peak memory and time for datacubes on disk, and 1 vs 2 dask workers.

Run:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/strain_scale.py [DIR]

It writes two chunked HDF5 datacubes of 128 x 128 float32 patterns to DIR (default: a temporary
folder, removed afterwards): a 64 x 64 scan (256 MiB) and a 128 x 128 scan (1 GiB). To keep the set-up
short, one simulated 16 x 128 strip of patterns (1e4 e-/pattern, a strained and an unstrained half)
is tiled down the scan. Every run happens in a fresh Python process that opens the file with
``chemomech.io.open_datacube`` and calls ``chemomech.strain.measure_strain`` on it:

* ``local``: the dask threaded scheduler in that process (2 threads): its peak resident memory
  (``ru_maxrss``) is the memory figure;
* ``workers=1`` / ``workers=2``: a ``distributed.LocalCluster`` with that many single-threaded worker
  processes (after a warm-up call on 4 scan rows, so worker imports are not timed), alternated
  ``REPEAT`` times; throughput ratio 2 / 1 workers from the fastest run of each, and the peak memory
  of the client and of each worker.

Peak memory includes the interpreter and its libraries (numpy, scipy, xarray, dask: ~200 MiB).
Each row also gives patterns per CPU-second (of the process for ``local``, summed over the workers
otherwise) and the 1-minute load average at the end of the run: on a shared machine, a 2-worker
run can only be faster than a 1-worker run if a second core is actually free.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STRIP = (16, 128)        # simulated block of scan positions, tiled down the scan
DOSE = 1e4               # electrons per pattern
CHUNK_ROWS = 4           # scan rows per dask chunk (8 MiB per row of 128 patterns of 128^2 float32)
REPEAT = 2               # 1- and 2-worker runs alternate this often; the fastest of each counts (shared machine)


def _child(path: str, mode: str) -> dict:
    from chemomech import io, strain

    cube = io.open_datacube(path, chunk_rows=CHUNK_ROWS)
    t0 = time.perf_counter()
    if mode == "local":
        cpu0 = _cpu_seconds()
        res = strain.measure_strain(cube)
        cpu = _cpu_seconds() - cpu0
        workers = []
    else:
        from distributed import Client, LocalCluster

        n = int(mode.split("=")[1])
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            strain.measure_strain(cube[:4])  # warm-up: imports on the workers are not counted
            cpu0 = sum(client.run(_cpu_seconds).values())
            t0 = time.perf_counter()
            res = strain.measure_strain(cube)
            dt = time.perf_counter() - t0
            cpu = sum(client.run(_cpu_seconds).values()) - cpu0
            workers = list(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    dt = time.perf_counter() - t0 if mode == "local" else dt
    return {"mode": mode, "patterns": int(cube.shape[0] * cube.shape[1]), "seconds": dt,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": [w / 1024 for w in workers], "measured": int(res.mask.sum()),
            "cpu_seconds": cpu, "load_average_1min": os.getloadavg()[0]}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _write(path: Path, scan: tuple[int, int], strip: np.ndarray) -> float:
    import h5py

    ny, nx = scan
    with h5py.File(path, "w") as f:
        d = f.create_dataset("datacube", shape=(ny, nx) + strip.shape[2:], dtype=np.float32,
                             chunks=(1, nx) + strip.shape[2:])
        for r in range(0, ny, strip.shape[0]):
            d[r:r + strip.shape[0]] = strip[:, :nx]
    return path.stat().st_size / 2**30


def _run(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), mode], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(folder: str | None = None):
    from chemomech.twin import stem4d

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(folder or tmp)
        sim = stem4d.simulate_uniform(exx=0.01, eyy=-0.005, scan_shape=STRIP, reference_columns=STRIP[1] // 2,
                                      dose=DOSE, rng=0)
        strip = sim.datacube.values.astype(np.float32)
        del sim
        rows = []
        for n in (64, 128):
            path = base / f"scan{n}.h5"
            gib = _write(path, (n, n), strip)
            modes = ["local"] + (["workers=1", "workers=2"] * REPEAT if n == 128 else [])
            for mode in modes:
                r = _run(path, mode)
                r["scan"], r["file_gib"] = f"{n}x{n}", gib
                rows.append(r)
                print(f"{r['scan']:8s} {gib:5.2f} GiB  {mode:10s} {r['seconds']:7.1f} s  "
                      f"{r['patterns'] / r['seconds']:7.0f} patterns/s  peak RSS {r['peak_rss_mib']:6.0f} MiB  "
                      f"workers {[round(w) for w in r['worker_peak_rss_mib']]} MiB  "
                      f"{r['patterns'] / r['cpu_seconds']:5.0f} patterns/CPU-s  load {r['load_average_1min']:.1f}",
                      flush=True)
            path.unlink()
    local = {r["scan"]: r for r in rows if r["mode"] == "local"}
    w1 = min((r for r in rows if r["mode"] == "workers=1"), key=lambda r: r["seconds"])
    w2 = min((r for r in rows if r["mode"] == "workers=2"), key=lambda r: r["seconds"])
    mem = local["128x128"]["peak_rss_mib"] / local["64x64"]["peak_rss_mib"]
    print(f"peak memory 128^2 / 64^2 scan (local) = {mem:.2f}")
    print(f"throughput 2 workers / 1 worker = {w1['seconds'] / w2['seconds']:.2f}")
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3])))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
