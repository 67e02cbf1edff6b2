"""Memory soak: call a compiled training step many times and check that the process's
resident memory stays flat.

    python -m graphnn.tools.soak                      # 10,000 steps on "cpu" and "numpy"
    python -m graphnn.tools.soak --steps 2000 --backend cpu --max-growth-mb 4

Prints the resident set size (RSS) before and after the steps; exits with status 1 when
it grew by more than the bound on any back end.
"""
import argparse
import os
import sys

import numpy as np

import graphnn as gn

from .models import mlp_classifier


def rss_bytes():
    """This process's resident set size, from /proc (Linux) or getrusage (peak) elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def training_step(backend):
    """A small MLP training step (outputs and parameter updates) and its feeds."""
    loss, logits, params = mlp_classifier((16, 32, 4))
    step = gn.compile([loss, gn.softmax(logits)], backend=backend,
                      updates=gn.optim.Adam(lr=1e-3).updates(loss, params))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((32, 16)).astype(np.float32),
             "y": rng.integers(0, 4, 32)}
    return step, feeds


def soak(backend, steps, warmup=200):
    """(RSS after warm-up, RSS after `steps` more calls, last loss)."""
    step, feeds = training_step(backend)
    for _ in range(warmup):
        step(**feeds)
    start = rss_bytes()
    for _ in range(steps):
        loss, _ = step(**feeds)
    return start, rss_bytes(), float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--backend", action="append", choices=["cpu", "numpy", "cuda"])
    parser.add_argument("--max-growth-mb", type=float, default=4.0)
    args = parser.parse_args(argv)
    failed = False
    for backend in args.backend or ["cpu", "numpy"]:
        start, end, loss = soak(backend, args.steps)
        growth = (end - start) / 2**20
        ok = growth <= args.max_growth_mb and np.isfinite(loss)
        failed |= not ok
        print(f"{backend:>5}: {args.steps} steps, RSS {start / 2**20:.1f} MB -> "
              f"{end / 2**20:.1f} MB (growth {growth:+.2f} MB, bound {args.max_growth_mb} MB), "
              f"loss {loss:.4f}  {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
