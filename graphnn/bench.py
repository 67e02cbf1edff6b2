"""`graphnn bench`: graph vs eager, measured side by side in one run.

Each workload is one training step (forward, loss, backward, SGD update) unless it says
"infer". Modes: `eager` (graphnn ops executed at once on NumPy, gradients from the tape),
`numpy` (the graph interpreted node by node), `cpu` (the whole step compiled to one Numba
function). Modes are interleaved round by round so machine drift hits all alike; the table
shows medians, the spread (min-max), and each mode's speed-up over eager. First-step losses
of every mode are compared, so nothing is faster by being wrong. Compile time is reported
apart from step time: cold (this process, empty cache unless it was warm already) and
warm (a fresh process loading the cached module).

    python -m graphnn bench --workloads xor,mlp-small --repeat 200
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import graphnn as gn

LR = 0.1


def _mlp_params(sizes, seed, init="glorot_uniform"):
    params = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params.append(gn.param(f"W{k + 1}", shape=(a, b), init=init, seed=seed + k))
        params.append(gn.param(f"b{k + 1}", np.zeros(b, np.float32)))
    return params


def _mlp_forward(x, params, act):
    h = x
    n = len(params) // 2
    for k in range(n):
        h = gn.matmul(h, params[2 * k]) + params[2 * k + 1]
        if k < n - 1:
            h = act(h)
    return h


class Workload:
    """A model built twice from the same initial values: as a graph and as an eager fn."""

    def __init__(self, name, sizes, act, loss, batch, train=True, seed=0):
        self.name, self.sizes, self.act, self.loss_kind = name, sizes, act, loss
        self.batch, self.train = batch, train
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        if loss == "mse":
            self.Y = rng.integers(0, 2, (batch, sizes[-1])).astype(np.float32)
        else:
            self.Y = rng.integers(0, sizes[-1], batch).astype(np.int64)
        self.params = _mlp_params(sizes, seed)
        self.init = [p.value.copy() for p in self.params]

    def reset(self):
        for p, v in zip(self.params, self.init):
            p.value = v

    def _loss(self, logits, y):
        if self.loss_kind == "mse":
            return gn.mse(gn.sigmoid(logits), y)
        return gn.softmax_cross_entropy(logits, y)

    def graph_step(self, backend):
        x = gn.input("x", (None, self.sizes[0]))
        y = gn.input("y", (None, self.sizes[-1]) if self.loss_kind == "mse" else (None,),
                     dtype="float32" if self.loss_kind == "mse" else "int64")
        logits = _mlp_forward(x, self.params, self.act)
        if not self.train:
            f = gn.compile(logits, backend=backend)
            return f, lambda: f(x=self.X)
        loss = self._loss(logits, y)
        f = gn.compile(loss, updates=gn.optim.SGD(lr=LR).updates(loss, self.params),
                       backend=backend)
        return f, lambda: f(x=self.X, y=self.Y)

    def eager_step(self):
        values = [v.copy() for v in self.init]
        X, Y = self.X, self.Y

        def loss_fn(*ps):
            logits = _mlp_forward(X, list(ps), self.act)
            return self._loss(logits, Y)

        grad_fn = gn.eager.value_and_grad(loss_fn, argnums=tuple(range(len(values))))
        if not self.train:
            return lambda: _mlp_forward(X, values, self.act)

        def step():
            loss, grads = grad_fn(*values)
            for v, g in zip(values, grads):
                v -= np.float32(LR) * g
            return loss
        return step


def _eltwise_fn(x):
    return gn.sigmoid(x) * gn.tanh(x) + x * x - 0.5 * x


def _arith_fn(x):
    return x * x - 0.5 * x + 0.25


class EltwiseWorkload:
    """An elementwise chain on 4M float32 values (`fn` picks the chain)."""

    def __init__(self, name="eltwise", fn=_eltwise_fn, n=4 * 1024 * 1024):
        self.name, self.fn = name, fn
        self.X = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        self.train = False

    def reset(self):
        pass

    def graph_step(self, backend):
        x = gn.input("x", (None,))
        f = gn.compile(self.fn(x), backend=backend)
        return f, lambda: f(x=self.X)

    def eager_step(self):
        return lambda: self.fn(self.X)


def make_workloads():
    return {
        "xor": lambda: Workload("xor", [2, 2, 1], gn.sigmoid, "mse", 4),
        "mlp-small": lambda: Workload("mlp-small", [64, 64, 10], gn.tanh, "sce", 32),
        "mlp-medium": lambda: Workload("mlp-medium", [784, 512, 256, 10], gn.relu, "sce", 256),
        "mlp-medium-infer": lambda: Workload("mlp-medium-infer", [784, 512, 256, 10], gn.relu,
                                             "sce", 256, train=False),
        "eltwise": EltwiseWorkload,
        "eltwise-arith": lambda: EltwiseWorkload("eltwise-arith", _arith_fn),
    }


def _time_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _warm_load_seconds(workload_name):
    """Seconds for a fresh process to build the same step and make its first call."""
    code = ("import time, graphnn.bench as b; w = b.make_workloads()[%r](); "
            "f, step = w.graph_step('cpu'); t0 = time.perf_counter(); step(); "
            "print(time.perf_counter() - t0, f.stats['cache_hit'])" % workload_name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    if out.returncode:
        return None, None
    seconds, hit = out.stdout.split()
    return float(seconds), hit == "True"


def run(workloads, modes, repeat, budget_seconds=20.0, warm=True):
    rows = []
    for name in workloads:
        w = make_workloads()[name]()
        steps, first, compile_info = {}, {}, {}
        for mode in modes:
            w.reset()
            if mode == "eager":
                step = w.eager_step()
                first[mode] = np.asarray(step()).copy()
            else:
                t0 = time.perf_counter()
                f, step = w.graph_step(mode)
                built = time.perf_counter() - t0
                first_call = _time_once(lambda: first.__setitem__(mode, np.asarray(step()).copy()))
                if mode == "cpu":
                    compile_info = {"cold_s": built + first_call,
                                    "cache_hit": f.stats.get("cache_hit")}
            steps[mode] = step
        reference = first[modes[0]]
        agree = {m: bool(np.allclose(first[m], reference, rtol=1e-3, atol=1e-4))
                 for m in modes}
        # interleave: one call of each mode per round, until repeat rounds or the budget
        times = {m: [] for m in modes}
        started = time.perf_counter()
        for _ in range(3):
            for m in modes:
                steps[m]()
        for r in range(repeat):
            for m in modes:
                times[m].append(_time_once(steps[m]))
            if time.perf_counter() - started > budget_seconds and r >= 5:
                break
        if warm and "cpu" in modes:
            compile_info["warm_s"], compile_info["warm_cache_hit"] = _warm_load_seconds(name)
        med = {m: statistics.median(times[m]) for m in modes}
        row = {"workload": name, "rounds": len(times[modes[0]]), "compile": compile_info,
               "modes": {m: {"median_s": med[m], "min_s": min(times[m]), "max_s": max(times[m]),
                             "first_value": float(np.asarray(first[m]).reshape(-1)[0]),
                             "agrees": agree[m]} for m in modes}}
        if "eager" in modes:
            for m in modes:
                row["modes"][m]["speedup_vs_eager"] = med["eager"] / med[m]
        if name.startswith("eltwise"):
            row["bandwidth"] = _bandwidth(w.X, med.get("cpu"))
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def _bandwidth(x, fused_seconds):
    dst = np.empty_like(x)
    t = statistics.median(_time_once(lambda: np.copyto(dst, x)) for _ in range(30))
    info = {"copyto_s": t, "copyto_GBps": 2 * x.nbytes / t / 1e9}
    if fused_seconds:
        info["fused_GBps"] = 2 * x.nbytes / fused_seconds / 1e9
        info["fused_share_of_copyto"] = t / fused_seconds
    return info


def _fmt_time(s):
    return f"{s * 1e6:9.1f} µs" if s < 1e-3 else f"{s * 1e3:9.2f} ms"


def format_row(row):
    lines = [f"\n{row['workload']}  ({row['rounds']} rounds, interleaved)"]
    for m, r in row["modes"].items():
        ratio = f"{r['speedup_vs_eager']:7.1f}x vs eager" if "speedup_vs_eager" in r else ""
        ok = "ok" if r["agrees"] else "DIFFERS"
        lines.append(f"  {m:6s} median {_fmt_time(r['median_s'])}  "
                     f"[{_fmt_time(r['min_s']).strip()} .. {_fmt_time(r['max_s']).strip()}]  "
                     f"{ratio}  first value {r['first_value']:.6g} {ok}")
    c = row.get("compile") or {}
    if c:
        warm = f"{c['warm_s']:.2f} s (cache hit: {c.get('warm_cache_hit')})" \
            if c.get("warm_s") is not None else "not measured"
        lines.append(f"  compile (cpu): first build+call {c['cold_s']:.2f} s "
                     f"(cache hit: {c['cache_hit']}), new process {warm}")
    b = row.get("bandwidth")
    if b:
        lines.append(f"  np.copyto {b['copyto_GBps']:.1f} GB/s; fused kernel "
                     f"{b.get('fused_GBps', 0):.1f} GB/s = {100 * b.get('fused_share_of_copyto', 0):.0f}% "
                     "of copyto")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="graphnn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="xor,mlp-small,mlp-medium,mlp-medium-infer,eltwise,eltwise-arith")
    parser.add_argument("--modes", default="eager,numpy,cpu")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timing per workload at most")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (default: as the environment says)")
    parser.add_argument("--no-warm", action="store_true", help="skip the new-process load")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)
        except ImportError:
            os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in make_workloads()]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(make_workloads())}")
    modes = [m for m in args.modes.split(",") if m]
    print(f"graphnn bench: numpy {np.__version__}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    rows = run(workloads, modes, args.repeat, args.budget, warm=not args.no_warm)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
