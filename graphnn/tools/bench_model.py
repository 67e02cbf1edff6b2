"""`graphnn bench my_model.py`: graph vs eager for YOUR model, measured side by side.

The model file defines a function `bench_model()` (another name with `--build NAME`) that
builds the model afresh on each call and returns a dict:

    def bench_model():
        model = gn.nn.Sequential([gn.nn.Dense(128, "relu"), gn.nn.Dense(10)])

        def loss(x, y):                      # the feeds by name -> a scalar loss
            return gn.softmax_cross_entropy(model(x), y)

        def batches():                       # an iterable of feed dicts {name: array}
            for i in range(0, 320, 32):
                yield {"x": X[i:i + 32], "y": Y[i:i + 32]}

        return {"loss": loss, "optimizer": gn.optim.Adam(0.002), "batches": batches}

  loss       a function of the feeds by name, written with graphnn ops and layers. Called
             on graph inputs it builds the graph (numpy and cpu modes compile it with the
             optimizer's update graph); called on arrays it computes at once (eager mode,
             `gn.eager.step`). Layers must be made inside bench_model(), so that each call
             makes a fresh model.
  optimizer  a gn.optim optimizer (fresh, one per call).
  batches    a function returning an iterable of feed dicts (or a list of them); the
             batches are made once and every mode runs the same ones in the same order,
             cycling when they run out.
  params     (optional) the gn.param nodes to train, or a function returning them
             (called after the loss has run once, so `lambda: model.params` works);
             default: every parameter the loss reads.

A 4-tuple (loss, params, optimizer, batches) is accepted too.

What is measured, per mode (eager: op by op with the tape; numpy: the graph interpreted
node by node; cpu: the whole step as one generated Numba function):
  - the first `--check-steps` steps (5) from the same initial weights (the first mode's
    copied into the others) on the same batches: each mode's losses must equal eager's
    (rtol 1e-3 in float32, 1e-8 in float64), else the command says which step differs and
    exits with code 1;
  - compile time: building the step and its first call (cpu: cold unless the on-disk
    cache already holds the step; the table says which);
  - step time: interleaved rounds (one step of every mode per round), medians and
    interquartile ranges; the ratio to eager is the median of per-round ratios, shown
    with its interquartile range;
  - peak memory: growth of the process's peak resident set while the mode builds its step
    and runs the check steps, and the transient peak of steady-state steps alone;
  - with --profile, where the time goes: eager time per op type (dispatch vs NumPy), and
    for the compiled step its BLAS and window kernels timed one by one outside the fused
    function.

BLAS threads are set for every mode alike (default 1, --threads N) and printed; a load
average above what the machine's cores absorb, or a wide spread of per-round ratios, is
reported with its size.

    graphnn bench examples/mlp_digits.py --plot mlp.png
    graphnn bench examples/cnn_digits.py --quick --profile

From Python: `gn.bench.compare(bench_model)` or `gn.bench.compare("my_model.py")`.
"""
import argparse
import contextlib
import json
import os
import runpy
import statistics
import sys
import time

import numpy as np

import graphnn as gn
from graphnn.errors import GraphError
from graphnn.node import Node

SCHEMA = "graphnn-bench-model/1"
MODES = ["eager", "numpy", "cpu"]
CHECK_STEPS = 5
TOLERANCE = {np.dtype(np.float32): (1e-3, 1e-4), np.dtype(np.float64): (1e-8, 1e-10)}
# a ratio whose interquartile range is wider than this share of its median is flagged
UNRELIABLE_SPREAD = 0.25


class Disagreement(GraphError):
    """The modes' losses differ over the first steps."""


# ---------------------------------------------------------------------------------------
# The model file


def load(path, name="bench_model"):
    """The model factory `name` defined in the Python file `path`."""
    namespace = runpy.run_path(str(path), run_name="graphnn_bench_model")
    factory = namespace.get(name)
    if not callable(factory):
        found = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) in (None, "graphnn_bench_model"))
        raise GraphError(f"{path} defines no function {name}(); `graphnn bench FILE.py` calls "
                         f"it to build the model (see graphnn.tools.bench_model). Functions "
                         f"in the file: {', '.join(found) or 'none'}")
    return factory


class Spec:
    """What bench_model() returned, checked: loss, optimizer, batches, params (or None)."""

    def __init__(self, value, where="bench_model()"):
        if isinstance(value, tuple) and len(value) == 4:
            loss, params, optimizer, batches = value
        elif isinstance(value, dict):
            missing = [k for k in ("loss", "optimizer", "batches") if k not in value]
            if missing:
                raise GraphError(f"{where} returned a dict without {', '.join(missing)}; it "
                                 f"needs loss, optimizer, batches (and optionally params)")
            loss, optimizer, batches = value["loss"], value["optimizer"], value["batches"]
            params = value.get("params")
        else:
            raise GraphError(f"{where} must return a dict {{loss, optimizer, batches[, params]}} "
                             f"or a tuple (loss, params, optimizer, batches), got "
                             f"{type(value).__name__}")
        if isinstance(loss, Node) or not callable(loss):
            raise GraphError(f"{where}: loss must be a function of the feeds by name (it is "
                             f"called on graph inputs and on arrays), got {loss!r:.60}")
        if not hasattr(optimizer, "apply_eager"):
            raise GraphError(f"{where}: optimizer must be a gn.optim optimizer, got "
                             f"{optimizer!r:.60}")
        self.loss, self.optimizer, self.batches_fn, self._params = \
            loss, optimizer, batches, params

    def params(self):
        return list(self._params() if callable(self._params) else self._params) \
            if self._params is not None else None

    def batches(self):
        batches = self.batches_fn() if callable(self.batches_fn) else self.batches_fn
        batches = [{k: np.ascontiguousarray(v) for k, v in b.items()} for b in batches]
        if not batches:
            raise GraphError("bench_model(): batches gave no feed dict")
        return batches


# ---------------------------------------------------------------------------------------
# Modes


class Runner:
    """One mode's training step on its own copy of the model."""

    def __init__(self, mode, spec, batches):
        self.mode, self.spec, self.batches = mode, spec, batches
        self.k = 0
        t0 = time.perf_counter()
        if mode == "eager":
            # one forward pass makes the layers' parameters; by default the step trains
            # those the loss reads, in order of first use
            read = _read_params(spec.loss, batches[0])
            self.params = spec.params() or read
            self.step_fn = gn.eager.step(spec.loss, spec.optimizer, self.params)
            self.function = None
        else:
            inputs = {name: gn.input(name, (None,) + a.shape[1:], dtype=a.dtype.name)
                      for name, a in batches[0].items()}
            loss = spec.loss(**inputs)
            if not isinstance(loss, Node) or loss.shape != ():
                raise GraphError(f"bench_model(): loss(**graph inputs) must return a scalar "
                                 f"graph node, got {loss!r:.80}")
            self.params = spec.params() or gn.Graph(loss).params
            updates = spec.optimizer.updates(loss, self.params)
            self.function = gn.compile(loss, updates=updates, backend=mode)
            self.step_fn = self.function
            self.loss_node = loss
        self.build_s = time.perf_counter() - t0
        self.first_call_s = None

    def step(self):
        feeds = self.batches[self.k % len(self.batches)]
        self.k += 1
        return self.step_fn(**feeds)

    def initial_weights(self):
        """{name or position: a copy of the value}, taken before any step."""
        return [(p.name, p.value.copy()) for p in self.params]

    def set_weights(self, weights, source):
        mine = self.params
        names = [n for n, _ in weights]
        if len(set(names)) == len(names) and set(names) == {p.name for p in mine}:
            values = dict(weights)
            weights = [(p.name, values[p.name]) for p in mine]
        if [p.shape for p in mine] != [v.shape for _, v in weights]:
            raise GraphError(f"{self.mode} and {source} train different parameters: "
                             f"{[p.name for p in mine]} vs {names}")
        for p, (_, v) in zip(mine, weights):
            p.value = v.copy()


def _read_params(loss_fn, batch):
    """The parameters the loss reads, in order of first use: one eager forward pass (no
    tape, no update)."""
    with gn.eager.reading_state() as scope:
        loss_fn(**batch)
    return list(scope.read_order)


def _set_threads(threads):
    from kernels import blas
    try:
        blas.set_threads(threads)
        return blas.threads()
    except Exception as exc:  # no BLAS found: say so, measure anyway
        return f"unknown ({exc})"


def load_note(cores=None, load=None):
    """A warning when the 1-minute load average (now, or `load`) says other processes
    compete for the cores, with how much slower a step may be; None when the machine looks
    idle enough."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
    busy = load / cores
    if load <= max(cores - 1, 0.5) + 0.25:
        return None
    # one benchmark thread among `load` runnable ones on `cores` cores gets about
    # cores / (load + 1) of a core when load + 1 > cores
    slowdown = max((load + 1) / cores, 1.0)
    return (f"WARNING: load average {load:.2f} on {cores} cores ({busy:.0%} busy before this "
            f"benchmark): each step may take up to {slowdown:.1f}x longer than on an idle "
            f"machine, by different amounts in different rounds, so a ratio of two modes may "
            f"be off by up to {slowdown:.1f}x either way; trust only ratios whose "
            f"interquartile range is narrow, or rerun on a quieter machine")


def threads_note(threads, blas_threads, cores=None):
    cores = cores or os.cpu_count() or 1
    note = f"BLAS threads: {blas_threads} for every mode"
    if isinstance(blas_threads, int) and blas_threads > cores:
        note += f" (more than the {cores} cores: threads will wait for each other)"
    return note


# ---------------------------------------------------------------------------------------
# Measuring


def _rss_kib(field):
    from .bench import _rss_kib as rss
    return rss(field)


def _reset_peak():
    from .bench import _reset_peak as reset
    return reset()


def _quartiles(samples):
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=4)
    return q[0], statistics.median(samples), q[2]


def _agree(a, b, dtype):
    rtol, atol = TOLERANCE.get(np.dtype(dtype), (1e-3, 1e-4))
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def compare(model, modes=None, check_steps=CHECK_STEPS, repeat=200, budget=10.0, warmup=3,
            threads=1, profile=False, plot=None, json_path=None, log=print, name=None):
    """Measure `model` (a bench_model function, or the path of a file defining one) in each
    mode; print the table (through `log`) and return the result dict. Raises Disagreement
    when the modes' losses differ over the first `check_steps` steps."""
    started = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        name = name or os.path.basename(str(model))
        model = load(model)
    name = name or getattr(model, "__name__", "model")
    modes = list(modes or MODES)
    if "eager" not in modes:
        modes.insert(0, "eager")  # the reference
    blas_threads = _set_threads(threads)
    import numba  # noqa: F401 - imported before any timing, counted in no mode
    env = {"cores": os.cpu_count(), "blas_threads": blas_threads, "threads_requested": threads}
    with contextlib.suppress(OSError):
        env["load_average"] = list(os.getloadavg())
    log(f"graphnn bench {name}: modes {', '.join(modes)}; {threads_note(threads, blas_threads)}; "
        f"load average {', '.join(f'{x:.2f}' for x in env.get('load_average', []))}")
    note = load_note()
    if note:
        log(note)
    result = {"schema": SCHEMA, "model": name, "environment": env, "modes": {},
              "check_steps": check_steps, "warnings": [note] if note else []}

    first_spec = Spec(model())
    batches = first_spec.batches()
    dtype = None
    runners = {}
    for i, mode in enumerate(modes):
        spec = first_spec if i == 0 else Spec(model())
        base = _rss_kib("VmRSS")
        resettable = _reset_peak()
        runner = Runner(mode, spec, batches)
        if not runners:
            start = runner.initial_weights()
        else:  # the same initial weights in every mode
            runner.set_weights(start, modes[0])
        losses = []
        t0 = time.perf_counter()
        losses.append(float(np.asarray(runner.step())))
        runner.first_call_s = time.perf_counter() - t0
        for _ in range(check_steps - 1):
            losses.append(float(np.asarray(runner.step())))
        peak = _rss_kib("VmHWM")
        dtype = dtype or runner.params[0].dtype
        entry = result["modes"][mode] = {
            "losses": losses, "build_s": runner.build_s, "first_call_s": runner.first_call_s,
            "compile_s": runner.build_s + runner.first_call_s,
            "peak_build_MB": (peak - base) / 1024 if resettable else None}
        if runner.function is not None and mode == "cpu":
            entry["cache_hit"] = bool(runner.function.stats.get("cache_hit"))
            entry["kernels"] = runner.function.stats.get("kernels")
        runners[mode] = runner
        log(f"  {mode:6s} built and ran {check_steps} steps in "
            f"{entry['compile_s'] + 0:.2f} s (build {runner.build_s:.2f} s, first call "
            f"{runner.first_call_s:.2f} s"
            + (f", cache {'hit' if entry.get('cache_hit') else 'miss: compiled cold'}"
               if "cache_hit" in entry else "") + f"); losses "
            + " ".join(f"{x:.6g}" for x in losses))

    ref = result["modes"]["eager"]["losses"]
    bad = []
    for mode in modes:
        ok = _agree(result["modes"][mode]["losses"], ref, dtype)
        result["modes"][mode]["agrees"] = ok
        if not ok:
            diffs = [k + 1 for k, (a, b) in enumerate(zip(result["modes"][mode]["losses"], ref))
                     if not _agree(a, b, dtype)]
            bad.append(f"{mode} differs from eager from step {diffs[0]} on: "
                       f"{result['modes'][mode]['losses'][diffs[0] - 1]:.8g} vs "
                       f"{ref[diffs[0] - 1]:.8g}")
    if bad:
        rtol, atol = TOLERANCE.get(np.dtype(dtype), (1e-3, 1e-4))
        result["error"] = "; ".join(bad)
        raise Disagreement(f"the losses of the first {check_steps} steps do not agree "
                           f"(rtol {rtol:g}, atol {atol:g}, {dtype}): {result['error']}. A "
                           f"mode that computes something else cannot be compared; "
                           f"nothing was timed.")
    log(f"  the {check_steps} first losses agree in every mode (eager is the reference)")

    _time_rounds(result, runners, repeat, budget, warmup, log)
    _steady_memory(result, runners)
    if profile:
        result["profile"] = {"eager": profile_eager(runners["eager"]),
                             **({"cpu": profile_compiled(runners["cpu"])}
                                if "cpu" in runners else {})}
        if "numpy" in runners:
            result["profile"]["numpy_note"] = (
                "numpy (interpreted graph) is not broken down: it runs each node's NumPy "
                "implementation like eager, without the tape")
    with contextlib.suppress(OSError):
        env["load_average_end"] = list(os.getloadavg())
    env["seconds"] = time.perf_counter() - started
    for line in report(result).splitlines():
        log(line)
    if plot:
        log(f"wrote {plot_result(result, plot)}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=2)
        log(f"wrote {json_path}")
    return result


def _time_rounds(result, runners, repeat, budget, warmup, log):
    calls = list(runners.items())
    for _ in range(warmup):
        for _, r in calls:
            r.step()
    times = {m: [] for m, _ in calls}
    started = time.perf_counter()
    for k in range(max(repeat, 5)):
        for m, r in calls:
            t0 = time.perf_counter()
            r.step()
            times[m].append(time.perf_counter() - t0)
        if k >= 4 and time.perf_counter() - started > budget:
            break
    rounds = len(times["eager"])
    result["rounds"] = rounds
    for m, samples in times.items():
        q1, med, q3 = _quartiles(samples)
        entry = result["modes"][m]
        entry.update(median_s=med, q1_s=q1, q3_s=q3, min_s=min(samples), samples=rounds)
        ratios = [e / t for e, t in zip(times["eager"], samples)]
        r1, rmed, r3 = _quartiles(ratios)
        entry.update(ratio=rmed, ratio_q1=r1, ratio_q3=r3)
        spread = (r3 - r1) / rmed if rmed else 0.0
        entry["ratio_spread"] = spread
        if m != "eager" and spread > UNRELIABLE_SPREAD:
            result["warnings"].append(
                f"WARNING: the {m}/eager ratio varies by ±{50 * spread:.0f}% between rounds "
                f"(interquartile range {r1:.2f}x..{r3:.2f}x around {rmed:.2f}x over {rounds} "
                f"rounds): read it as {r1:.1f}x to {r3:.1f}x, no closer")


def _steady_memory(result, runners, steps=10):
    for m, r in runners.items():
        steady = _rss_kib("VmRSS")
        if not _reset_peak():
            continue
        for _ in range(steps):
            r.step()
        result["modes"][m]["peak_steps_MB"] = (_rss_kib("VmHWM") - steady) / 1024


# ---------------------------------------------------------------------------------------
# Profiles


def profile_eager(runner, seconds=1.0, max_steps=200):
    """Eager time per op type and phase, per step; and the step time outside the ops."""
    runner.step()
    steps, t_total = 0, 0.0
    with gn.eager.profile() as prof:
        t0 = time.perf_counter()
        while steps < max_steps and (steps < 3 or time.perf_counter() - t0 < seconds):
            runner.step()
            steps += 1
        t_total = time.perf_counter() - t0
    rows = [{"phase": ph, "op": op, "calls": c / steps, "total_s": t / steps,
             "numpy_s": n / steps} for ph, op, c, t, n in prof.rows()]
    in_ops = sum(r["total_s"] for r in rows)
    return {"steps": steps, "step_s": t_total / steps, "ops": rows, "in_ops_s": in_ops,
            "numpy_s": sum(r["numpy_s"] for r in rows),
            "outside_ops_s": t_total / steps - in_ops}


def _buffer_shape(buf, dims):
    return tuple(d if isinstance(d, int) else dims[d] for d in buf.shape)


def profile_compiled(runner, repeat=20):
    """The compiled step is ONE generated function: its steps cannot be timed from inside.
    Instead: the whole step, and each of its BLAS matmuls and window kernels (convolution,
    pooling) timed alone on arrays of the same shapes; the rest of the step (elementwise
    loops, reductions, the call itself) is the difference."""
    from kernels import ir
    from kernels.windows import HELPERS as loop_helpers
    f = runner.function
    program = f.program
    feeds = runner.batches[0]
    dims = {}
    for dim, (index, axis) in program.dims.items():
        dims[dim] = feeds[f.graph.inputs[index].name].shape[axis]
    kinds = {}
    for s in program.steps:
        kinds[type(s).__name__] = kinds.get(type(s).__name__, 0) + 1
    rng = np.random.default_rng(0)

    def arr(buf):
        return rng.standard_normal(_buffer_shape(buf, dims)).astype(buf.dtype)

    def best(fn):
        fn()
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    matmuls, windows = [], []
    for s in program.steps:
        if isinstance(s, ir.Matmul):
            a, b, out = arr(s.a), arr(s.b), arr(s.out)
            aa, bb = (a.T if s.trans_a else a), (b.T if s.trans_b else b)
            if aa.ndim == 2 and bb.ndim == 2 and out.shape == (aa.shape[0], bb.shape[1]):
                t = best(lambda aa=aa, bb=bb, out=out: np.dot(aa, bb, out=out))
            else:
                t = best(lambda aa=aa, bb=bb: aa @ bb)
            matmuls.append({"shape": f"{aa.shape[0]}x{aa.shape[1]} @ {bb.shape[0]}x{bb.shape[1]}",
                            "comment": s.comment, "seconds": t})
        elif isinstance(s, ir.Window) and s.helper in loop_helpers and \
                s.epilogue is None:  # (packed and pre-transformed kernels, and epilogues,
            # have no loop twin)
            fn = _window_kernel(s.helper)
            args = [arr(b) for b in s.args]
            out = arr(s.out)
            t = best(lambda fn=fn, args=args, out=out, p=s.params: fn(*args, *p, out))
            windows.append({"helper": s.helper, "out": "x".join(map(str, out.shape)),
                            "seconds": t})
    step_s = best(runner.step)
    blas = sum(m["seconds"] for m in matmuls)
    win = sum(w["seconds"] for w in windows)
    return {"step_s": step_s, "steps_by_kind": kinds, "matmuls": matmuls, "windows": windows,
            "matmul_s": blas, "window_s": win, "rest_s": step_s - blas - win,
            "note": "one generated function per step: per-kernel times are not measurable "
                    "inside it; its matmuls and window kernels were timed alone on arrays of "
                    "the same shapes (caches warm, so a lower bound), the rest is the "
                    "difference"}


_WINDOW_KERNELS = {}


def _window_kernel(helper):
    if helper not in _WINDOW_KERNELS:
        from numba import njit
        from kernels import windows
        _WINDOW_KERNELS[helper] = njit(cache=False)(windows.HELPERS[helper])
    return _WINDOW_KERNELS[helper]


# ---------------------------------------------------------------------------------------
# Output


def _t(s):
    if s is None:
        return "-"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def report(result):
    lines = [f"\n{result['model']}: {result.get('rounds', 0)} interleaved rounds (one step of "
             f"every mode per round); ratio = eager time / mode time, median of per-round "
             f"ratios [interquartile range]\n",
             "| mode | median step | IQR | vs eager | compile (build + first call) | "
             "peak memory (build + 5 steps / steps alone) | losses |",
             "|---|---|---|---|---|---|---|"]
    for m, r in result["modes"].items():
        if "median_s" not in r:
            continue
        ratio = "1 (reference)" if m == "eager" else \
            f"{r['ratio']:.2f}x [{r['ratio_q1']:.2f}..{r['ratio_q3']:.2f}]"
        comp = f"{r['compile_s']:.2f} s"
        if "cache_hit" in r:
            comp += " (cache hit)" if r["cache_hit"] else " (cold)"
        mem = (f"{r['peak_build_MB']:.1f} MB" if r.get("peak_build_MB") is not None else "-") + \
            (f" / {r['peak_steps_MB']:.1f} MB" if r.get("peak_steps_MB") is not None else "")
        lines.append(f"| {m} | {_t(r['median_s'])} | {_t(r['q1_s'])}..{_t(r['q3_s'])} | "
                     f"{ratio} | {comp} | {mem} | {'agree' if r['agrees'] else 'DIFFER'} |")
    env = result["environment"]
    lines.append(f"\nBLAS threads {env['blas_threads']}; load average "
                 f"{', '.join(f'{x:.2f}' for x in env.get('load_average', []))} at the start, "
                 f"{', '.join(f'{x:.2f}' for x in env.get('load_average_end', []))} at the end; "
                 f"{env.get('seconds', 0):.0f} s in all")
    lines += result["warnings"]
    if "profile" in result:
        lines += format_profile(result["profile"])
    return "\n".join(lines)


def format_profile(prof, top=12):
    lines = []
    e = prof.get("eager")
    if e:
        lines.append(f"\neager, per step ({e['steps']} steps profiled; timing every op adds "
                     f"its own overhead, so read shares, not absolute times): "
                     f"{_t(e['step_s'])} per step, of which {_t(e['in_ops_s'])} in "
                     f"graphnn ops ({_t(e['numpy_s'])} inside NumPy, "
                     f"{_t(e['in_ops_s'] - e['numpy_s'])} dispatch: shape and dtype rules, "
                     f"tape), {_t(e['outside_ops_s'])} outside ops (tape replay, adjoint sums, "
                     f"Python)\n")
        lines.append("| phase | op | calls/step | time/step | in NumPy | dispatch |")
        lines.append("|---|---|---|---|---|---|")
        for r in e["ops"][:top]:
            lines.append(f"| {r['phase']} | {r['op']} | {r['calls']:.0f} | {_t(r['total_s'])} | "
                         f"{_t(r['numpy_s'])} | {_t(r['total_s'] - r['numpy_s'])} |")
        if len(e["ops"]) > top:
            rest = e["ops"][top:]
            lines.append(f"| | {len(rest)} more | {sum(r['calls'] for r in rest):.0f} | "
                         f"{_t(sum(r['total_s'] for r in rest))} | "
                         f"{_t(sum(r['numpy_s'] for r in rest))} | |")
    c = prof.get("cpu")
    if c:
        kinds = ", ".join(f"{n} {k.lower()}" for k, n in sorted(c["steps_by_kind"].items()))
        lines.append(f"\ncpu: {_t(c['step_s'])} per step, ONE generated function of "
                     f"{sum(c['steps_by_kind'].values())} steps ({kinds}). {c['note']}:")
        lines.append(f"  {len(c['matmuls'])} matmuls (BLAS) {_t(c['matmul_s'])}"
                     + (f", {len(c['windows'])} window kernels {_t(c['window_s'])}"
                        if c["windows"] else "")
                     + (f", the rest {_t(c['rest_s'])} ({100 * c['rest_s'] / c['step_s']:.0f}%: "
                        "fused elementwise loops, reductions, the call)" if c["rest_s"] >= 0
                        else f": MORE than the whole step ({_t(c['step_s'])}). Timed alone "
                        "(a generic @njit copy of each kernel, a noisy machine) they are "
                        "slower than inside the generated function, which specialises "
                        "them; read them as each kernel's relative weight, not as a split "
                        "of the step"))
        for m in c["matmuls"]:
            lines.append(f"    matmul {m['shape']:24s} {_t(m['seconds']):>10s}  {m['comment'][:60]}")
        for w in c["windows"]:
            lines.append(f"    {w['helper']:30s} out {w['out']:14s} {_t(w['seconds']):>10s}")
    if prof.get("numpy_note"):
        lines.append(f"\n{prof['numpy_note']}")
    return lines


def plot_result(result, path):
    """Three panels: step time per mode (box: interquartile range, whiskers 5-95%; log
    scale), the losses of the check steps per mode, and (with a profile) eager time per op."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m, r in result["modes"].items() if "median_s" in r]
    e = result.get("profile", {}).get("eager")
    panels = 3 if e else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))
    ax = axes[0]
    data = [[result["modes"][m]["median_s"]] for m in modes]
    meds = [result["modes"][m]["median_s"] for m in modes]
    q1 = [result["modes"][m]["q1_s"] for m in modes]
    q3 = [result["modes"][m]["q3_s"] for m in modes]
    colors = plt.get_cmap("tab10").colors
    ax.bar(range(len(modes)), meds, color=[colors[i] for i in range(len(modes))],
           yerr=[[m - a for m, a in zip(meds, q1)], [b - m for m, b in zip(meds, q3)]],
           capsize=4)
    for i, m in enumerate(modes):
        r = result["modes"][m]
        label = _t(r["median_s"]) + ("" if m == "eager" else
                                     f"\n{r['ratio']:.1f}x [{r['ratio_q1']:.1f}..{r['ratio_q3']:.1f}]")
        ax.text(i, r["q3_s"] * 1.15, label, ha="center", va="bottom", fontsize=8)
    del data
    ax.set_yscale("log")
    ax.set_ylim(min(q1) / 3, max(q3) * 12)
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels(modes)
    ax.set_ylabel("time per training step (s, log)")
    ax.set_title(f"median step time, IQR whiskers\n({result['rounds']} interleaved rounds, "
                 f"BLAS threads {result['environment']['blas_threads']})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    markers = "os^vD"
    for i, m in enumerate(result["modes"]):
        losses = result["modes"][m]["losses"]
        ax.plot(range(1, len(losses) + 1), losses, marker=markers[i % 5], color=colors[i],
                linestyle="-" if i == 0 else "none", markersize=8 - 2 * i, label=m)
    ax.set_xticks(range(1, result["check_steps"] + 1))
    ax.set_xlabel("step (same initial weights and batches)")
    ax.set_ylabel("loss")
    ax.set_title("first losses: the modes compute the same", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    if e:
        ax = axes[2]
        by_op = {}
        for r in e["ops"]:
            key = f"{r['op']} ({r['phase'][0]})"
            by_op[key] = (by_op.get(key, (0, 0))[0] + r["numpy_s"],
                          by_op.get(key, (0, 0))[1] + r["total_s"] - r["numpy_s"])
        top = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:10][::-1]
        names = [k for k, _ in top]
        ax.barh(names, [v[0] * 1e6 for _, v in top], color="tab:blue", label="in NumPy")
        ax.barh(names, [v[1] * 1e6 for _, v in top], left=[v[0] * 1e6 for _, v in top],
                color="tab:gray", label="dispatch (graphnn)")
        ax.set_xlabel("µs per step")
        ax.set_title(f"eager: time per op (f forward, b backward, u update)\n"
                     f"{_t(e['outside_ops_s'])} per step outside ops", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=8)
    fig.suptitle(f"graphnn bench {result['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# Command line


def estimate_seconds(modes, budget, profile, cached=None):
    """An upper estimate of the run's length, printed before it starts."""
    compile_s = 0 if cached else 15.0  # a cold cpu compile of a small model on 2 cores
    return (compile_s if "cpu" in modes else 0) + budget + 2 * len(modes) + \
        (3.0 * ("cpu" in modes) + 2.0 if profile else 0)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="graphnn bench FILE.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a Python file defining bench_model()")
    parser.add_argument("--build", default="bench_model",
                        help="the function of FILE.py that builds the model (bench_model)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated from {','.join(MODES)} (eager is always run: "
                             "it is the reference)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for every mode (default 1)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds at most (2000; --quick 300)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed rounds at most (10; --quick 3)")
    parser.add_argument("--check-steps", type=int, default=CHECK_STEPS,
                        help="steps whose losses must agree before timing (5)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 3 s of rounds; says how long it will take first")
    parser.add_argument("--profile", action="store_true",
                        help="where the time goes: eager per op, compiled step vs its BLAS")
    parser.add_argument("--plot", default=None, help="write a chart (PNG) to this file")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    args.mode_list = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.mode_list if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.budget is None:
        args.budget = 3.0 if args.quick else 10.0
    if args.repeat is None:
        args.repeat = 300 if args.quick else 2000
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    estimate = estimate_seconds(args.mode_list, args.budget, args.profile)
    print(f"graphnn bench {args.file}: about {estimate:.0f} s at most ({args.budget:g} s of "
          f"timed rounds; a cold compile of the cpu step counts up to ~15 s of it, less when "
          f"the compile cache holds the step)")
    try:
        factory = load(args.file, args.build)
        compare(factory, args.mode_list, args.check_steps, args.repeat, args.budget,
                threads=args.threads, profile=args.profile, plot=args.plot,
                json_path=args.json, name=os.path.basename(args.file))
    except Disagreement as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
