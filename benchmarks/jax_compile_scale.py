"""jax.jit's cold compile of `graphnn bench`'s residual stacks, for comparison with
graphnn's compile-at-scale table (docs/BENCHMARKS.md).

    .venv/bin/python benchmarks/jax_compile_scale.py            # resmlp/resconv 10, 100, 1000
    .venv/bin/python benchmarks/jax_compile_scale.py resmlp-1000 --runs 2

Each measurement is a fresh process (no persistent compilation cache, XLA_FLAGS as `graphnn
bench` sets them: Eigen on one thread; XLA's own thread pool is left at both cores, as
graphnn compiles in two processes; OPENBLAS_NUM_THREADS=1) that imports jax and runs a
trivial jitted function first (not counted), then times: the model and its jitted training step made
(`bench._jax_runner`: value_and_grad and SGD in one jax.jit), the first call (trace, XLA
compile and one step, blocked), and the median of 5 more steps. jax is an optional peer
(`pip install jax`), never a dependency of graphnn.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT = ["resmlp-10", "resconv-10", "resmlp-100", "resconv-100", "resmlp-1000",
           "resconv-1000"]


def child(name):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_compilation_cache", False)
    import graphnn.tools.bench as bench
    jax.block_until_ready(jax.jit(lambda a: a * 2 + 1)(jnp.ones(4)))  # (XLA's start-up)
    t0 = time.perf_counter()
    runner = bench._jax_runner(bench.WORKLOADS[name]())
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(runner.step())
    first = time.perf_counter() - t0
    steps = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(runner.step())
        steps.append(time.perf_counter() - t0)
    print(json.dumps({"workload": name, "build_s": build, "first_call_s": first,
                      "step_ms": 1e3 * statistics.median(steps),
                      "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "jax": jax.__version__}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="*", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    from graphnn.tools.bench import JAX_ONE_THREAD
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=JAX_ONE_THREAD, OPENBLAS_NUM_THREADS="1", GRAPHNN_QUIET="1")
    print("| workload | build | first call (trace + XLA compile + step) | step | peak RSS |")
    print("|---|---|---|---|---|")
    for _ in range(args.runs):
        for name in args.workloads:
            try:
                p = subprocess.run([sys.executable, __file__, "--child", name], env=env,
                                   capture_output=True, text=True, timeout=args.timeout)
                r = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 \
                    else None
            except subprocess.TimeoutExpired:
                print(f"| {name} | did not finish in {args.timeout:.0f} s | | | |", flush=True)
                continue
            if r is None:
                print(f"| {name} | failed: {p.stderr.strip()[-300:]} | | | |", flush=True)
                continue
            print(f"| {name} | {r['build_s']:.2f} s | {r['first_call_s']:.2f} s | "
                  f"{r['step_ms']:.2f} ms | {r['peak_rss_MB']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
