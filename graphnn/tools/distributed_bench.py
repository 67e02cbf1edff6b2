"""Data-parallel scaling on this machine: `python -m graphnn.tools.distributed_bench [steps]`.

Runs each model with `mpirun -n 1` and `-n 2` (one BLAS thread per rank), prints the median
step time with its compute / all-reduce / update split, and, on paper, the ring all-reduce
time for 1 and 10 Gb/s links (docs/DISTRIBUTED.md)."""
import os
import sys
import time

import numpy as np

import graphnn as gn
from graphnn.distributed import DataParallel, abort_on_error, world

from .models import mlp_classifier

BENCH_MODELS = {"mlp 64-128-10 (digits)": (64, 128, 10), "mlp 784-512-256-10": (784, 512, 256, 10)}
BENCH_BATCH = 256


def _bench_trainer(sizes, seed=0):
    loss, _, params = mlp_classifier(sizes, seed=seed)
    return DataParallel(loss, params, gn.optim.SGD(0.01)), params


def _bench_worker(steps=40):
    """Run under mpirun: time data-parallel steps of each model; rank 0 prints one line per
    model: name, ranks, parameters, median step ms, and the compute/allreduce/update split."""
    rng = np.random.default_rng(0)
    for name, sizes in BENCH_MODELS.items():
        trainer, params = _bench_trainer(sizes)
        X = rng.random((BENCH_BATCH, sizes[0]), dtype=np.float32)
        Y = rng.integers(0, sizes[-1], BENCH_BATCH)
        trainer(x=X, y=Y)  # compile
        trainer.seconds = dict.fromkeys(trainer.seconds, 0.0)
        times = []
        for _ in range(steps):
            if trainer.comm is not None:
                trainer.comm.Barrier()
            started = time.perf_counter()
            trainer(x=X, y=Y)
            times.append(time.perf_counter() - started)
        if trainer.rank == 0:
            split = " ".join(f"{k}={v / steps * 1e3:.3f}" for k, v in trainer.seconds.items())
            print(f"RESULT|{name}|{trainer.size}|{trainer.gradient_count}|"
                  f"{np.median(times) * 1e3:.3f}|{split}", flush=True)


def communication_estimate(parameters, ranks, gbit_per_s, latency_s=50e-6, itemsize=4):
    """Seconds for one ring all-reduce of `parameters` values over `ranks` machines linked at
    `gbit_per_s`: each rank sends and receives 2 (n-1)/n of the buffer, in 2 (n-1) rounds
    each paying `latency_s`. A step whose compute time is below this is communication-bound
    (unless communication overlaps the backward pass, which graphnn does not do)."""
    moved = 2 * (ranks - 1) / ranks * parameters * itemsize
    return moved * 8 / (gbit_per_s * 1e9) + 2 * (ranks - 1) * latency_s


def bench(max_ranks=2, steps=40):
    """Measure 1 vs `max_ranks` ranks on this machine (mpirun, one BLAS thread per rank) and
    print the table and the communication estimate for 1 and 10 Gb/s links."""
    import shutil
    import subprocess
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        print("mpirun not found: install OpenMPI (apt-get install openmpi-bin) and mpi4py")
        return 1
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    rows = []
    for ranks in range(1, max_ranks + 1):
        command = [mpirun, "-n", str(ranks), "--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-run-as-root")
        command += [sys.executable, "-m", "graphnn.tools.distributed_bench", "--worker",
                    str(steps)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(done.stdout, done.stderr, sep="\n")
            return done.returncode
        rows += [line.split("|")[1:] for line in done.stdout.splitlines()
                 if line.startswith("RESULT|")]
    print(f"global batch {BENCH_BATCH}, {os.cpu_count()} cores, one BLAS thread per rank, "
          f"{steps} steps, median step time")
    print(f"{'model':<26s}{'ranks':>6s}{'params':>10s}{'grad bytes':>12s}{'step ms':>10s}"
          f"{'speed-up':>10s}  split ms per step")
    base = {}
    for name, ranks, count, ms, split in rows:
        base.setdefault(name, float(ms))
        print(f"{name:<26s}{ranks:>6s}{int(count):>10d}{4 * int(count):>12d}{float(ms):>10.2f}"
              f"{base[name] / float(ms):>10.2f}  {split}")
    print("\nOn paper, one machine per rank: ring all-reduce time (50 us latency per round); a "
          "step is communication-bound when its compute time per rank is below it. Compute "
          "per rank: the 1-rank step time measured here / ranks (the global batch is split).")
    print(f"{'model':<26s}{'ranks':>6s}{'compute/rank ms':>17s}{'1 Gb/s ms':>12s}"
          f"{'10 Gb/s ms':>12s}")
    for name in BENCH_MODELS:
        count = next(int(c) for n, _, c, _, _ in rows if n == name)
        for ranks in (2, 4, 8, 64):
            print(f"{name:<26s}{ranks:>6d}{base[name] / ranks:>17.3f}"
                  f"{communication_estimate(count, ranks, 1) * 1e3:>12.3f}"
                  f"{communication_estimate(count, ranks, 10) * 1e3:>12.3f}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        comm, _, _ = world()
        with abort_on_error(comm, "the benchmark"):
            _bench_worker(int(argv[1]) if len(argv) > 1 else 40)
        return 0
    return bench(steps=int(argv[0]) if argv else 40)


if __name__ == "__main__":
    sys.exit(main())
