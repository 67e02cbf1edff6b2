"""The cpu back end (backend="cpu"): the whole step as one generated Numba function.

`CpuFunction` lowers the graph (base.LoweredFunction), has kernels/cpu.py generate one
module whose single `program` function Numba compiles and caches on disk (kernels/loader.py),
and at call time checks the feeds in Python, then makes ONE call into compiled code, which
also writes the parameter updates in place.
"""
import inspect
import os
import re
import select
import signal
import sys
import threading
import time
import weakref

import numba
import numpy as np

from kernels import blas, cpu as cpu_codegen, loader
from kernels.windows import PACKED_HELPERS

from ..api import ValueState
from ..errors import BackendError, OptionError, user_location
from ..node import collector_spares_existing
from ..passes import OPTIONAL_PASSES
from .base import LoweredFunction, raise_positional
from .compile_helper import CompileHelper, pending as helpers_pending


# The arrays kept per recycled output: the next call writes one nobody else holds.
KEEP_RESULTS = 3
# Recycled outputs of at least this size are NumPy's arrays, not Numba's: NumPy asks Linux
# for transparent huge pages for them (madvise, from 4 MiB), and a loop streaming through
# 16 MB of output then takes 8-10% less time (fewer TLB misses); a new result nobody
# recycles costs 8 page faults instead of 4096.
HUGE_PAGE_BYTES = 1 << 22
# Seconds a first call compiles before its progress bar shows (stderr, library mode).
PROGRESS_DELAY = 1.0
# Programs of at least this many steps run in library mode (see library_steps()).
LIBRARY_STEPS = 48
# A first call compiles its kernels in this many processes at most (see compile_jobs()).
COMPILE_JOBS = 2
# The helpers of a convolution's gradient: a program that has them runs in library mode.
CONV_GRADIENT_HELPERS = ("conv2d_grad_input", "conv2d_grad_filter")
# Graphs of at least this many nodes fork their compile helper when gn.compile has the graph
# (their build takes long enough to hide Numba's start-up in the helper; see _graph_ready).
EARLY_HELPER_NODES = 1000
# Seconds the forked compiling process may go without using the CPU before it is taken for
# stuck, killed, and its kernels compiled by this process (see _report_of).
STALLED_SECONDS = 10.0
# what the generated program raises before its first step (nothing is written yet, so the
# call can be made again: after growing the workspace, or to name the bad feed)
_RAISED_BEFORE_ANY_STEP = (cpu_codegen.WORKSPACE_TOO_SMALL, cpu_codegen.SHAPE_MISMATCH,
                           cpu_codegen.INDEX_OUT_OF_RANGE)


class CpuFunction(LoweredFunction):
    """A graph compiled to one Numba-compiled function. See `gn.compile`.

    `.source` is the generated module; `.stats` reports nodes after each pass, kernels,
    fused nodes, buffer bytes, compile time and whether Numba's cache was hit;
    `.kernels` lists each step's name and the graph nodes it computes (for pictures).
    With `check_finite=True`, a call whose outputs or new parameter values hold NaN or Inf
    restores the parameters and names the first bad node (see CompiledFunction).
    """

    backend = "cpu"
    optional_passes = tuple(OPTIONAL_PASSES)

    def __init__(self, outputs, updates=None, check_finite=False, parallel=False,
                 optimize_graph=True, library=None, progress=True, passes=None,
                 conv_code=()):
        started = time.perf_counter()
        self._helper, self._library_choice = None, library
        self._more_conv_code = frozenset(conv_code)
        unknown = sorted(map(repr, self._more_conv_code - cpu_codegen.CONV_CODE))
        if unknown:
            raise OptionError(f"backend 'cpu': conv_code takes names of "
                              f"{', '.join(sorted(cpu_codegen.CONV_CODE))}; got "
                              f"{', '.join(unknown)} (at {user_location()})")
        try:
            self._build(outputs, updates, check_finite, optimize_graph, passes, library,
                        parallel, progress)
        except BaseException:
            if self._helper is not None:
                self._helper.close()
            raise
        self.stats["lower_seconds"] = time.perf_counter() - started - \
            self.stats["build_seconds"]
        if self._helper is not None:
            if self.library:  # (a function never called lets its helper go)
                weakref.finalize(self, self._helper.close)
            else:
                self._helper.close()
                self._helper = None

    def _graph_ready(self):
        """A large graph that will run in library mode forks its compile helper now: it
        sets Numba up while this process lowers the graph (compile_helper.py)."""
        if len(self.graph.nodes) >= EARLY_HELPER_NODES and self._library_choice is not False \
                and not helpers_pending() and compile_jobs() > 1:
            helper = CompileHelper(early=True)
            self._helper = helper if helper.pid is not None else None

    def _build(self, outputs, updates, check_finite, optimize_graph, passes, library, parallel,
               progress):
        super().__init__(outputs, updates, check_finite, optimize_graph, passes)
        lowering = self.lowering
        chosen = library is not None
        if library is None:
            library = len(self.program.steps) >= library_steps()
        self.library = bool(library)
        self._progress = progress and os.environ.get("GRAPHNN_QUIET", "") in ("", "0")
        # constant 3x3 kernels transformed for Winograd once, here (kernels/cpu.py
        # winograd_constants): constants the program reads after the graph's own
        # (and zero-padding copies in front of convolutions folded into their padding)
        folded = cpu_codegen.fold_conv_pads(self.program, lowering.step_nodes)
        steps = len(self.program.steps)
        # (and the parts of concatenations stored in place by the steps that make them)
        training = bool(self.update_pairs)
        placed = cpu_codegen.place_in_concat(self.program, lowering.step_nodes, training) \
            if self.passes["concat_in_place"] else 0
        # (and bias + relu after a convolution done as it writes its result)
        epilogues = cpu_codegen.fold_conv_epilogues(self.program, lowering.step_nodes,
                                                    training) \
            if self.passes["conv_epilogues"] else 0
        # (and input gradients of 3x3 convolutions as Winograd convolutions, as the forward)
        cpu_codegen.grad_inputs_as_winograd(self.program, lowering.step_nodes)
        if folded or len(self.program.steps) != steps:  # (steps renumbered: the kernels list again, as LoweredFunction makes it)
            self.kernels = [{"name": f"step {k}: {type(step).__name__.lower()}",
                             "nodes": nodes, "buffer": step.out.name}
                            for k, (step, nodes) in enumerate(zip(self.program.steps,
                                                                  lowering.step_nodes))]
        values = [n.value for n in lowering.consts]
        self._pretransformed = cpu_codegen.winograd_constants(
            self.program, values, pack=self.passes["packed_kernels"])
        # the other constant float32 kernels packed for graphnn's own gemm tile kernel
        # (kernels/packed.py), on CPUs where it beats BLAS
        if self.passes["packed_kernels"]:
            self._pretransformed += cpu_codegen.packed_constants(
                self.program, values + self._pretransformed)
        # a program with packed kernels (an ImageNet-size inference) runs in library mode
        # whatever its length: as one fused function with the packed modes of conv_gemm,
        # ZFNet-512's 36 steps compiled in 9.6-10.2 s, as a library in 6-7 s, and a call
        # from the driver costs microseconds against milliseconds per convolution
        if not chosen and any(getattr(step, "helper", "") in PACKED_HELPERS
                              for step in self.program.steps):
            self.library = True
        # and so does a program that trains convolutions: fused, a convolution's three
        # modes compile inside one function (cnn-mnist's 37 steps: 7.5-8.4 s cold, as a
        # library 2.5-3 s for the same step, 44.7 against 45.0 ms; a tiny convolutional
        # net's step costs more from the driver: cnn-digits 345 against 389 µs)
        if not chosen and any(getattr(step, "helper", "") in CONV_GRADIENT_HELPERS
                              for step in self.program.steps):
            self.library = True
        # (and the Python functions of gn.repeat's loops, which only the library mode's
        # driver calls)
        hosts = cpu_codegen.host_constants(self.program)
        if hosts and chosen and not self.library:
            raise BackendError(f"backend 'cpu': library=False makes one compiled function, "
                               f"which cannot run gn.repeat's loop: leave library unset "
                               f"(at {user_location()})")
        self.library = self.library or bool(hosts)
        try:
            if self.library:
                driver, kernel_sources = cpu_codegen.generate_library(
                    self.program, parallel=parallel, more_conv_code=self._more_conv_code)
            else:
                self.source = cpu_codegen.generate(self.program, parallel=parallel)
        except blas.BlasNotFound as exc:
            raise BackendError(f"backend 'cpu': {exc} (at {user_location()})") from None
        self._kernels = []  # library mode: [module, path] of each kernel, K0, K1, ...
        if self.library:
            self._kernels = [list(loader.load_module(s)) for s in kernel_sources]
            self.module, self.path = loader.load_module(driver)
            cpu_codegen.bind_library(self.module, [m for m, _ in self._kernels])
            self.source = driver + "".join(
                f"\n\n# {'=' * 78}\n# K{k}: kernel module {os.path.basename(path)}\n{src}"
                for k, ((_, path), src) in enumerate(zip(self._kernels, kernel_sources)))
        else:
            self.module, self.path = loader.load_module(self.source)
        self._fn = self.module.program
        # (the constants themselves, not copies: a large model's weights are not doubled)
        self._const_arrays = [n.attr("value").argument() for n in lowering.consts] + \
            self._pretransformed + hosts
        self.stats.update({
            "passes": self.pass_report,
            "kernels": len(self.program.steps),
            "fused_nodes": sum(max(len(k["nodes"]) - 1, 0) for k in self.kernels),
            "module": self.path,
            "compile_seconds": None,
            "cache_hit": None,
            "mode": "library" if self.library else "fused",
            "library_kernels": len(self._kernels),
            "kernels_compiled": None,
            "kernels_cached": None,
            "conv_pads_folded": folded,
            "concat_parts_in_place": placed,
            "conv_epilogues": epilogues,
            "winograd_pretransformed": sum(1 for s in self.program.steps if getattr(
                s, "helper", "") in ("conv2d_winograd", "conv2d_winograd_packed")),
            "packed_kernels": sum(1 for s in self.program.steps if getattr(
                s, "helper", "") in ("conv2d_packed", "conv2d_winograd_packed")),
        })
        self._states = [p.state for p in self.state_nodes]
        # Feeds that share memory with a state this step updates in place are copied first
        # (see _unaliased); outputs that would share memory with an earlier output are
        # copied (found at the first call: the program's views do not change).
        updated = {id(t) for t, _ in self.update_pairs}
        self._updated_states = [p.state for p in self.state_nodes if id(p) in updated]
        self._updated_ids = frozenset()
        self._shared_outputs = ()
        self._writes_states = bool(self.update_pairs)  # (device copies become older)
        # Memory kept between calls (see kernels/cpu.py): the workspace of temporaries, and
        # for each recycled output the last KEEP_RESULTS arrays returned for it (a loop that
        # rebinds `y = f(...)` holds one of them while the next call runs, one that keeps
        # the previous result too, `prev, y = y, f(...)`, holds two).
        self._workspace = np.empty(0, np.uint8)
        self._recycled = self.module.RECYCLED
        self._returned = [[] for _ in self._recycled]
        self._recycling = self.passes["output_recycling"]  # off: every result is new
        self._compiled = False
        # The fast path (see __call__): each input's name, dtype and rank, and the state
        # and constant arrays that follow the inputs, kept until a state gets a new array.
        self._feed_types = tuple((n.name, n.dtype, n.ndim) for n in self.graph.inputs)
        self._n_inputs = len(self._feed_types)
        self._fast_path_ready = False  # after the first call, unless check_finite
        self._lock_free = False  # the same, for a fused program that recycles no output
        self._args_after_inputs = self._entry_point = self._epoch = None

    def explain(self):
        """A readable report: nodes after each pass, the generated steps with the nodes each
        one fuses, temporaries after memory planning, compile time and cache use."""
        lines = [f"graphnn cpu function: {len(self.graph.nodes)} nodes in the graph"]
        for name, count in self.stats.get("passes", []):
            lines.append(f"  after {name:<24s}{count:5d} nodes")
        temps = {s.out.name for s in self.program.steps if s.out.role == "temp"}
        made = sum(1 for s in self.program.steps if s.out.role == "temp")
        where = (f"a Python driver calling {len(self._kernels)} library kernels"
                 if self.library else "one generated function")
        lines.append(f"  {len(self.program.steps)} steps in {where} "
                     f"({self.stats['fused_nodes']} nodes fused into their consumers); "
                     f"{len(temps)} temporaries for {made} results after buffer reuse")
        for k in self.kernels:
            nodes = ", ".join(n.op for n in k["nodes"])
            lines.append(f"    {k['name']:<26s} -> {k['buffer']:<18s} [{nodes}]")
        memory = self.stats.get("buffer_bytes")
        if memory:
            lines.append(f"  buffers at the first call's shapes: temporaries "
                         f"{_kib(memory['temporaries'])} (workspace kept between calls "
                         f"{_kib(memory['workspace'])}), outputs {_kib(memory['outputs'])}")
        compiled = self.stats.get("compile_seconds")
        lines.append(f"  module {self.path}")
        if compiled is None:
            lines.append("  not called yet")
        elif self.library:
            processes = self.stats.get("compile_processes", 1)
            blocks = self.stats.get("block_kernels_compiled")
            lines.append(f"  first call {compiled:.2f} s: {self.stats['kernels_compiled']} "
                         f"kernels compiled" + (f" in {processes} processes"
                                                if processes > 1 else "") +
                         f", {self.stats['kernels_cached']} from the cache" +
                         (f", and {blocks} kernels of gn.repeat's blocks" if blocks else ""))
            slow = sorted((e for e in self.stats["kernel_seconds"] if e["seconds"] is not None),
                          key=lambda e: -e["seconds"])[:5]
            lines.append("  slowest first kernel calls: " + ", ".join(
                f"{e['kernel']} {e['seconds']:.2f} s" for e in slow))
        else:
            lines.append(f"  first call {compiled:.2f} s, Numba cache "
                         f"{'hit' if self.stats['cache_hit'] else 'miss (compiled now)'}")
        return "\n".join(lines)

    def _recycle(self):
        """For each recycled output, an earlier result that only this function still holds
        (else a zero-size array). Each is taken out of its list, so no other call can be
        handed it."""
        spare = list(self.module.recycle_nothing())
        for k, returned in enumerate(self._returned):
            for i in range(len(returned)):
                a = returned[i]  # (not enumerate: its tuple would hold `a` too)
                if sys.getrefcount(a) == _HELD_BY_US and not weakref.getweakrefcount(a) \
                        and a.flags.writeable:
                    spare[k] = returned.pop(i)
                    if a.nbytes >= HUGE_PAGE_BYTES and not a.flags.owndata:
                        # Numba allocated it: NumPy's array instead (see HUGE_PAGE_BYTES),
                        # once, as the arrays recycled later are the ones passed in
                        spare[k] = np.empty(a.shape, a.dtype)
                    break
            else:  # all held: a new array, NumPy's when the last one was large
                if returned and returned[-1].nbytes >= HUGE_PAGE_BYTES:
                    spare[k] = np.empty(returned[-1].shape, returned[-1].dtype)
        return spare

    def _keep(self, results):
        """Keep the recycled outputs' arrays (the last KEEP_RESULTS of each)."""
        if not self._recycling or len({id(r) for r in results}) != len(results):
            return  # an array returned twice is never recycled
        for k, returned in zip(self._recycled, self._returned):
            returned.append(results[k])
            del returned[:-KEEP_RESULTS]

    def _call(self, fn, arrays, tail):
        """fn(inputs, states and constants, recycled outputs, workspace) -> outputs; when
        the workspace is too small for these inputs (the program raises before any step),
        a large enough one, and again."""
        spare = self._recycle() if self._returned else ()
        try:
            results = fn(*arrays, *tail, *spare, self._workspace)
        except ValueError as exc:
            if str(exc) != cpu_codegen.WORKSPACE_TOO_SMALL:
                raise
            self._grow_workspace(arrays)
            results = fn(*arrays, *tail, *spare, self._workspace)
        if self._returned:
            self._keep(results)
        return results

    def _grow_workspace(self, arrays):
        self._workspace = np.empty(self.module.workspace_bytes(*arrays), np.uint8)

    @collector_spares_existing()  # (loading or compiling kernels: see node.py)
    def _first_call(self, args):
        if self.library:
            return self._first_library_call(args)
        started = time.perf_counter()
        arrays, tail = args[:len(self._feed_types)], args[len(self._feed_types):]
        try:
            result = self._call(self._fn, arrays, tail)
        except Exception as exc:
            if not _looks_like_cache_failure(exc):
                raise
            # A damaged cache file: drop Numba's cache for this module and compile afresh.
            loader.clear_numba_cache(self.path)
            self.module = loader.reload_module(self.path)
            self._fn = self.module.program
            result = self._call(self._fn, arrays, tail)
        self._epoch = None  # find the entry point again (the module may have been reloaded)
        self.stats["compile_seconds"] = time.perf_counter() - started
        hits = sum(self._fn.stats.cache_hits.values())
        self.stats["cache_hit"] = hits > 0
        compiled = int(_misses(self._fn) > 0)
        self.stats.update(kernels_compiled=compiled, kernels_cached=1 - compiled)
        self._compiled = True
        self._fast_path_ready = not self.check_finite
        self._lock_free = self._fast_path_ready and not self.library and not self._returned
        self.stats["buffer_bytes"] = self._buffer_bytes(arrays)
        return result

    def _first_library_call(self, args):
        """The first call in library mode: each kernel is compiled (or loaded from Numba's
        cache) at its first call. Reports progress on stderr when that takes more than a
        second, recovers from a damaged cache entry kernel by kernel, and records which
        kernels were compiled and how long each first call took."""
        started = time.perf_counter()
        arrays, tail = args[:len(self._feed_types)], args[len(self._feed_types):]
        kernels = [module.kernel for module, _ in self._kernels]
        misses = [_misses(d) for d in kernels]
        on_demand = set(getattr(self.module, "ON_DEMAND", ()))
        ready = [bool(d.overloads) or _cache_on_disk(d) or k in on_demand
                 for k, d in enumerate(kernels)]
        todo = ready.count(False)
        made = []  # the progress bar, once made

        def progress():
            if not made:
                bar = None
                if todo and self._progress:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=todo, unit="kernel", file=sys.stderr,
                               delay=PROGRESS_DELAY, leave=False,
                               desc=f"graphnn: compiling {todo} kernels "
                                    f"({len(kernels) - todo} cached)")
                made.append(bar)
            return made[0]
        seconds = [None] * len(kernels)
        # (kernel -> seconds compiling it before the first call; and those compiled in
        # another process)
        earlier, elsewhere, processes = self._compile_in_parallel(
            arrays, tail, ready, progress) if todo > 1 and compile_jobs() > 1 else ({}, set(), 1)
        if self._helper is not None:  # (nothing for it to compile: every kernel was cached)
            self._helper.close()
            self._helper = None
        bar = progress()
        for k in range(len(kernels)):
            setattr(self.module, f"K{k}", self._first_kernel_call(k, seconds, bar, ready))
        try:
            result = self._call(self._fn, arrays, tail)
        finally:
            cpu_codegen.bind_library(self.module, [module for module, _ in self._kernels])
            if bar is not None:
                bar.close()
        for k, t in earlier.items():
            seconds[k] = t + (seconds[k] or 0.0)
        compiled = [_misses(module.kernel) > before or k in elsewhere
                    for k, ((module, _), before) in enumerate(zip(self._kernels, misses))]
        called = [k not in on_demand or seconds[k] is not None for k in range(len(kernels))]
        self._epoch = None
        self.stats["compile_seconds"] = time.perf_counter() - started
        self.stats.update(
            cache_hit=not any(compiled), kernels_compiled=sum(compiled),
            block_kernels_compiled=getattr(self, "_block_kernels", 0),
            compile_processes=processes,
            kernels_cached=sum(called) - sum(compiled),
            kernel_seconds=[{"kernel": f"K{k}", "module": os.path.basename(path),
                             "seconds": t, "compiled": c}
                            for k, ((_, path), t, c) in enumerate(
                                zip(self._kernels, seconds, compiled))])
        self._compiled = True
        self._fast_path_ready = not self.check_finite
        self.stats["buffer_bytes"] = self._buffer_bytes(arrays)
        return result

    def _compile_in_parallel(self, arrays, tail, ready, progress):
        """Compile the kernels that are not ready in two processes: the driver runs once
        with each kernel replaced by a recorder of its argument types (kernels write in
        place, so the driver needs nothing they compute); a forked helper (forked when
        `gn.compile` had the graph, for a large one, else now: see compile_helper.py) and
        this process take them from one queue, costliest first, the helper compiling into
        Numba's disk cache; the real first call then loads the helper's kernels from the
        cache. Kernels it did not compile (a failure, an unexpected signature) are compiled
        at their first call as before: only the time differs. `progress()` gives the
        progress bar (made after the fork: its monitor is a thread). Returns ({kernel:
        seconds compiling it}, the kernels the other process compiled, the number of
        processes)."""
        kernels = [module.kernel for module, _ in self._kernels]
        types, hosted = self._kernel_argument_types(arrays, tail, kernels)
        # (jobs: [dispatcher, module path, argument types], this program's kernels first,
        # then those of the functions its Python steps call: gn.repeat's blocks)
        jobs = [(kernels[k], self._kernels[k][1], types.get(k)) for k in range(len(kernels))]
        todo = [k for k in range(len(kernels)) if not ready[k] and k in types]
        seen = {(path, str(t)) for _, path, t in jobs}
        for job in hosted:  # (a kernel two of them share is compiled once)
            if (job[1], str(job[2])) not in seen:
                seen.add((job[1], str(job[2])))
                todo.append(len(jobs))
                jobs.append(job)
        helper, self._helper = self._helper, None
        if len(todo) < 2:
            if helper is not None:
                helper.close()
            return {}, set(), 1
        # the costliest kernels (by their sources' length) first: the last ones taken are
        # the cheap ones, so the two processes finish close together
        cost = {k: 2000 + _source_length(jobs[k][1]) for k in todo}
        todo.sort(key=cost.get, reverse=True)
        if helper is None or not helper.alive():
            if helper is not None:
                helper.close()
            helper = CompileHelper(early=False)
        if helper.pid is None or not helper.share([jobs[k][1:] for k in todo]):
            helper.close()
            return {}, set(), 1
        self.stats["compile_helper"] = "forked by gn.compile" if helper.early else \
            "forked by the first call"
        seconds, report, bar = {}, {}, progress()
        hosted_todo = sum(1 for k in todo if k >= len(kernels))
        if bar is not None and hosted_todo:  # (the bar counts the blocks' kernels too)
            bar.total += hosted_todo
            bar.set_description(_COUNT.sub(str(bar.total), bar.desc, count=1))
        try:
            while (i := helper.next()) is not None:
                k = todo[i]
                started = time.perf_counter()
                try:
                    _compile(jobs[k][0], jobs[k][2])
                except Exception:  # (the first call compiles it again and raises there)
                    continue
                if k < len(kernels):
                    seconds[k] = time.perf_counter() - started
                    ready[k] = True
                if bar is not None:
                    bar.update(1)
            report = helper.finish(_report_of)
        finally:
            helper.close()  # (interrupted: the other process's work is not needed)
        finished = [todo[i] for i in report if 0 <= i < len(todo)]
        # (the blocks' kernels compiled here: for stats["block_kernels_compiled"])
        self._block_kernels = len({k for k in todo if k >= len(kernels) and
                                   (k in finished or jobs[k][0].overloads)})
        done = {todo[i]: t for i, t in report.items()
                if 0 <= i < len(todo) and todo[i] < len(kernels)}
        for k, t in done.items():
            seconds[k], ready[k] = t, True
        if bar is not None:
            bar.update(len(finished))
        return seconds, set(done), 2

    def _kernel_argument_types(self, arrays, tail, kernels):
        """({kernel number: the Numba types of its first call's arguments}, [dispatcher,
        module path, types] of each kernel of the functions the program's Python steps
        call that is not compiled yet), from running the driver with each kernel replaced
        by a recorder (({}, []) when that run raises). The states and constants are
        replaced by new arrays like them: the driver copies results into states, and the
        results of this run are not computed. A Python step (gn.repeat's loop) is not run:
        it names the kernels its block's functions would compile (`kernels_to_compile`)."""
        types, hosted = {}, []

        def recording(host):
            def record(*arrays):
                hosted.extend(host.kernels_to_compile(*arrays))
            return record if hasattr(host, "kernels_to_compile") else _not_run
        tail = [np.empty_like(a) if isinstance(a, np.ndarray) else
                recording(a) if callable(a) else a for a in tail]

        def recorder(k):
            dispatcher = kernels[k]

            def record(*args):
                if k not in types:
                    types[k] = _argument_types(dispatcher, args)
                return False
            return record
        for k in range(len(kernels)):
            setattr(self.module, f"K{k}", recorder(k))
        spare = self.module.recycle_nothing()
        try:
            with np.errstate(all="ignore"):  # (the driver's own sums add what is there)
                if self.module.workspace_bytes(*arrays) > self._workspace.size:
                    self._grow_workspace(arrays)
                self._fn(*arrays, *tail, *spare, self._workspace)
        except Exception:
            return {}, []
        finally:  # (the kernels again, whatever happened)
            cpu_codegen.bind_library(self.module, [module for module, _ in self._kernels])
        return types, hosted

    def direct_entry(self, arrays):
        """After the first call: `call(*arrays)` runs the compiled program on input arrays
        of the same types as `arrays` (C-contiguous, in the order of `self.graph.inputs`),
        without the feed checks, lock and output recycling of a call, for a caller that
        makes thousands of calls with arrays it made itself (gn.repeat's loop). The
        program still compares the shapes with its own and raises before any step: the
        call is then made again the full way, which grows the workspace or names the bad
        feed. None when this function cannot be called so (not called yet, check_finite,
        parameters it updates)."""
        if not self._compiled or self.check_finite or self.update_pairs:
            return None
        names = [name for name, _, _ in self._feed_types]
        with self._lock:
            if self._epoch != ValueState.epoch:
                self._new_states(list(arrays))
            entry, after = self._entry_point, list(self._args_after_inputs)
            spare = tuple(self.module.recycle_nothing())
        single = self.single

        def call(*arrays):
            try:
                results = entry(*arrays, *after, *spare, self._workspace)
            except ValueError as exc:
                if str(exc) not in _RAISED_BEFORE_ANY_STEP:
                    raise
                return self(**dict(zip(names, arrays)))
            return results[0] if single else results
        return call

    def kernels_to_compile(self, feeds):
        """[dispatcher, module path, argument types] of each kernel this function would
        compile at a first call with `feeds` (in fused mode its one function; [] once
        called): what a program that calls this function from a Python step (gn.repeat's
        loop) compiles alongside its own kernels, in the same processes."""
        if self._compiled:
            return []
        with self._lock:
            arrays, _ = self.feeds.check(feeds)
            if self.module.workspace_bytes(*arrays) > self._workspace.size:
                self._grow_workspace(arrays)
            tail = [s.value for s in self._states] + self._const_arrays
            if not self.library:
                if self._fn.overloads or _cache_on_disk(self._fn):
                    return []
                args = [*arrays, *tail, *self.module.recycle_nothing(), self._workspace]
                return [(self._fn, self.path, _argument_types(self._fn, args))]
            kernels = [module.kernel for module, _ in self._kernels]
            types, hosted = self._kernel_argument_types(arrays, tail, kernels)
        on_demand = set(getattr(self.module, "ON_DEMAND", ()))
        return [(kernels[k], self._kernels[k][1], t) for k, t in types.items()
                if not (kernels[k].overloads or _cache_on_disk(kernels[k]) or
                        k in on_demand)] + hosted

    def _first_kernel_call(self, k, seconds, bar, ready):
        """What the driver calls as K<k> during the first call: the kernel, timed at its
        first call; a damaged Numba cache entry is dropped and the kernel compiled afresh
        (nothing has run when loading fails, so the call is simply made again)."""
        def call(*args):
            module, path = self._kernels[k]
            if seconds[k] is not None:
                return module.kernel(*args)
            started = time.perf_counter()
            try:
                result = module.kernel(*args)
            except Exception as exc:
                if not _looks_like_cache_failure(exc):
                    raise
                loader.clear_numba_cache(path)
                module = self._kernels[k][0] = loader.reload_module(path)
                result = module.kernel(*args)
            seconds[k] = time.perf_counter() - started
            if bar is not None and not ready[k]:
                bar.update(1)
            return result
        return call

    def _buffer_bytes(self, arrays):
        """Bytes of the program's temporaries (after buffer reuse) and outputs for the shapes
        of these inputs, and of the workspace this function keeps."""
        dims = {dim: arrays[index].shape[axis]
                for dim, (index, axis) in self.program.dims.items()}

        def size(buf):
            count = 1
            for d in buf.shape:
                count *= dims[d] if isinstance(d, str) else d
            return count * np.dtype(buf.dtype).itemsize
        outputs = {b.name: b for b in self.program.outputs if b.role == "temp"}
        temps = {s.out.name: s.out for s in self.program.steps
                 if s.out.role == "temp" and s.out.name not in outputs}
        return {"temporaries": sum(map(size, temps.values())),
                "workspace": int(self._workspace.nbytes),
                "outputs": sum(map(size, outputs.values()))}

    def __call__(self, *args, **feeds):
        """The common call takes a fast path (a training step on small arrays is over in
        microseconds): exactly the inputs' names, each a C-contiguous writeable ndarray of
        the input's dtype and rank. Their shapes are checked by the generated program before
        any step runs; when they are wrong, the full check names the problem
        (gn.FeedError). Any other call, and every call with check_finite, takes the full
        path.

        One call runs at a time (other threads wait: see CompiledFunction). A fused program
        that recycles no output needs no lock on the fast path: its one compiled call holds
        the GIL from the first step to the last, and nothing else it does can interleave
        with another thread's call."""
        if args:
            raise_positional(self, args)
        if self._lock_free and len(feeds) == self._n_inputs and \
                self._epoch == ValueState.epoch:
            arrays = self._fast_feeds(feeds)
            if arrays is not None:
                if self._updated_ids:
                    arrays = self._unaliased(arrays)
                try:
                    results = self._entry_point(*arrays, *self._args_after_inputs,
                                                self._workspace)
                except ValueError as exc:
                    if str(exc) not in _RAISED_BEFORE_ANY_STEP:
                        raise
                else:  # (else the locked path grows the workspace or names the bad feed)
                    return self._fast_results(results)
        with self._lock:  # (a with statement: no Ctrl-C lands between taking and the try)
            if self._fast_path_ready and len(feeds) == self._n_inputs:
                arrays = self._fast_feeds(feeds)
                if arrays is not None:
                    if self._epoch != ValueState.epoch:
                        self._new_states(arrays)
                    if self._updated_ids:
                        arrays = self._unaliased(arrays)
                    try:
                        if self._returned:
                            results = self._call(self._entry_point, arrays,
                                                 self._args_after_inputs)
                        else:  # (the same as _call, in fewer steps)
                            results = self._entry_point(*arrays, *self._args_after_inputs,
                                                        self._workspace)
                    except ValueError as exc:
                        if str(exc) == cpu_codegen.WORKSPACE_TOO_SMALL:
                            self._grow_workspace(arrays)
                            return self(**feeds)
                        if str(exc) not in _RAISED_BEFORE_ANY_STEP:
                            raise
                        self.feeds.check(feeds)  # raises FeedError naming the bad feed
                        raise
                    return self._fast_results(results)
            return self._locked_call(feeds)

    def _fast_feeds(self, feeds):
        """The feeds as the fast path takes them (the inputs' arrays in order), or None
        when one is not a C-contiguous writeable ndarray of its input's dtype and rank."""
        arrays = []
        for name, dtype, ndim in self._feed_types:
            a = feeds.get(name)
            if a.__class__ is not np.ndarray or a.dtype is not dtype or a.ndim != ndim \
                    or not a.flags.carray:
                return None
            arrays.append(a)
        return arrays

    def _fast_results(self, results):
        if self._writes_states:
            ValueState.host_writes += 1
        if self._shared_outputs:
            results = self._separated(results)
        return results[0] if self.single else results

    def _new_states(self, arrays):
        """After a state got a new array (and before the first fast call): check the states,
        keep the argument list that follows the inputs, and find the compiled entry point
        for these argument types. The fast path checks that the inputs have those types, so
        it calls that entry point, skipping the Numba dispatcher's typing of every array."""
        self._check_state()
        self._args_after_inputs = [s.value for s in self._states] + self._const_arrays
        if self.library:  # a Python driver: nothing to look up
            self._entry_point, self._epoch = self._fn, ValueState.epoch
            return
        memory = [*self.module.recycle_nothing(), self._workspace]
        signature = tuple(numba.typeof(a) for a in arrays + self._args_after_inputs + memory)
        compiled = self._fn.overloads.get(signature)
        # (Numba's compiled overloads expose their entry point; any other case uses the
        # dispatcher, which types the arguments itself)
        self._entry_point = getattr(compiled, "entry_point", None) or self._fn
        self._updated_ids = _owners(self._updated_states)
        self._epoch = ValueState.epoch

    def _run(self, arrays, binding):
        if self._epoch != ValueState.epoch:
            self._updated_ids = _owners(self._updated_states)
        if self._updated_ids:
            arrays = self._unaliased(arrays)
        args = arrays + [s.value for s in self._states] + self._const_arrays
        if not self._compiled:
            results = self._first_call(args)
            self._shared_outputs = _sharing_earlier(results)
        else:
            results = self._call(self._fn, arrays, args[len(arrays):])
        if self._writes_states:
            ValueState.host_writes += 1
        return self._separated(results) if self._shared_outputs else results

    def _unaliased(self, arrays):
        """The feeds, each copied when it shares memory with a state this step updates in
        place (a parameter's own array fed as data must be read as it was before the
        update). An array that owns its memory can share it with no other owner, so only
        the states themselves and views are looked at closely."""
        out = arrays
        for k, a in enumerate(arrays):
            root = a
            while isinstance(root, np.ndarray) and root.base is not None:
                root = root.base
            if id(root) in self._updated_ids or not isinstance(root, np.ndarray) and any(
                    np.may_share_memory(a, s.value) for s in self._updated_states):
                if out is arrays:
                    out = list(arrays)
                out[k] = a.copy()
        return out

    def _separated(self, results):
        """Copies of the outputs that would share memory with an earlier output (the same
        node asked for twice, or a view of another output)."""
        results = list(results)
        for k in self._shared_outputs:
            results[k] = results[k].copy()
        return tuple(results)


_COUNT = re.compile(r"\d+")  # the kernel count in the progress bar's description


def _not_run(*arrays):
    """Stands for a Python step of the program (gn.repeat's loop) in a run that only
    records the kernels' argument types."""


def _owners(states):
    """The ids of the arrays that own the memory of these states' values."""
    owners = set()
    for state in states:
        root = state.value
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        owners.add(id(root))
    return frozenset(owners)


def _sharing_earlier(results):
    """Indexes of the results that share memory with an earlier result."""
    return tuple(k for k, r in enumerate(results)
                 if any(np.shares_memory(r, e) for e in results[:k]))


def _kib(n):
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _held_by_us():
    """What sys.getrefcount says, in _recycle's loop, of an array only the list holds
    (measured the same way, as interpreters count borrowed references differently)."""
    returned = [np.empty(1)]
    for i in range(len(returned)):
        a = returned[i]
        return sys.getrefcount(a)


_HELD_BY_US = _held_by_us()


def library_steps():
    """The number of steps from which a program runs in library mode (kernels compiled one
    by one, sequenced by a Python driver) instead of as one fused function:
    $GRAPHNN_LIBRARY_STEPS, else LIBRARY_STEPS."""
    value = os.environ.get("GRAPHNN_LIBRARY_STEPS", "")
    return int(value) if value.strip().isdigit() else LIBRARY_STEPS


def compile_jobs():
    """How many processes a first call in library mode compiles its kernels in:
    $GRAPHNN_JOBS, else COMPILE_JOBS, at most the CPUs this process may run on; 1 where
    this process is not forked: not on Linux, while another thread runs (a lock it holds
    would never be released in the copy; see _other_threads), under MPI."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork") or \
            _other_threads() or "mpi4py.MPI" in sys.modules:
        return 1  # (a fork copies no other thread, nor would MPI allow it)
    value = os.environ.get("GRAPHNN_JOBS", "").strip()
    jobs = int(value) if value.isdigit() else COMPILE_JOBS
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(jobs, cpus, 2))


# Threads a fork may leave behind: they only draw progress bars (gn.fit's redraws while
# its first call compiles, tqdm's monitor), whose locks and streams the forked copy never
# takes (it writes nothing: its warnings are ignored).
_BAR_THREADS = ("graphnn-fit-progress",)


def _other_threads():
    """Whether a thread other than this one runs, bar threads aside."""
    this = threading.current_thread()
    return any(t is not this and t.name not in _BAR_THREADS
               and type(t).__name__ != "TMonitor" for t in threading.enumerate())


def _report_of(pid, read):
    """What the forked process `pid` writes to the pipe `read` until it closes it; b""
    when it stops using the CPU for STALLED_SECONDS before that (it is then killed:
    compiling is all CPU work, so it waits on something that will never come)."""
    chunks, ticks, since = [], _cpu_ticks(pid), time.monotonic()
    while True:
        if select.select([read], [], [], 0.5)[0]:
            data = os.read(read, 1 << 16)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            continue
        now, used = time.monotonic(), _cpu_ticks(pid)
        if used is None or used != ticks:
            ticks, since = used, now
        elif now - since > STALLED_SECONDS:
            _kill(pid)
            return b""


def _cpu_ticks(pid):
    """The CPU time process `pid` has used, in clock ticks (None when /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # (utime and stime)
    except (OSError, IndexError, ValueError):
        return None


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _argument_types(dispatcher, args):
    """The Numba types the dispatcher would compile `args` for (defaults left out of the
    call as Omitted, as Numba's own dispatch does)."""
    params = list(inspect.signature(dispatcher.py_func).parameters.values())
    found = [dispatcher.typeof_pyval(a) for a in args]
    found += [numba.types.Omitted(p.default) for p in params[len(args):]]
    return tuple(found)


def _compile(dispatcher, types):
    dispatcher._compilation_chain_init_hook()
    dispatcher.compile(types)


def _source_length(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _misses(dispatcher):
    """How many times Numba compiled `dispatcher` because its disk cache had no entry."""
    return sum(dispatcher.stats.cache_misses.values())


def _cache_on_disk(dispatcher):
    """Whether Numba's disk cache holds an index for this dispatcher (then its first call
    loads rather than compiles, unless the signature is new)."""
    cache = getattr(dispatcher, "_cache", None)
    index = getattr(getattr(cache, "_cache_file", None), "_index_path", None) or \
        getattr(cache, "_index_path", None)
    return bool(index) and os.path.exists(index)


def _looks_like_cache_failure(exc):
    text = f"{type(exc).__name__}: {exc}"
    return any(word in text for word in ("pickle", "cache", "EOF", "unmarshal", "truncated",
                                         "UnpicklingError", "corrupt"))
