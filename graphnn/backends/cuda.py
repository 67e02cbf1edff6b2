"""The GPU back end (backend="cuda"): the whole program as generated numba.cuda kernels.

`CudaFunction` lowers the graph exactly like the CPU back end, then kernels/cuda.py emits
one module holding a kernel per step and a host function that launches them in order.

Where the data lives:
- constants and parameters are copied to the device once and stay there; parameter
  updates are written in place on the device;
- a call copies its host feeds to the device and its outputs back, nothing else (the
  counts are in `.stats["host_to_device"]` and `.stats["device_to_host"]`); a feed that
  is already a device array (a Numba device array, or anything with
  `__cuda_array_interface__`: CuPy, PyTorch) is used where it is, without a copy, and
  `outputs_on="device"` returns the outputs as device arrays (copies on the device: they
  stay valid after the next call);
- device temporaries are allocated once per binding of the symbolic dims (batch size)
  and reused by later calls with the same sizes.

Parameter values and the host: a step that updates a parameter on the device marks its
host value out of date (`ValueState.device_copy`), and the next read of `W.value` (by the
user, `gn.save`, a checkpoint or another back end) copies it back first, once: the host
never shows a stale value and a training loop pays no copy per step
(`sync_params=True` copies after every call instead). Assigning `W.value = ...` drops the
device's copy and is uploaded by the next call; a "cpu" or "numpy" step that updates
parameters in place makes every cuda function upload its parameters again before its next
call. Only an in-place write by hand (`W.value[...] = x`) is not seen: assign instead, or
call `compiled.params_to_device()`.

Without a GPU, set NUMBA_ENABLE_CUDASIM=1 before Python starts to run the kernels in
Numba's CUDA simulator (slow: tiny shapes only). `generate_only=True` builds the source
and the kernel module without touching a device, so `.ptx()` can compile every kernel to
PTX on a machine with the CUDA compiler libraries but no GPU.
"""
import os
import time

import numpy as np

from kernels import cuda as cuda_codegen, ir, loader

from .. import shapes as S
from ..api import ValueState
from ..errors import BackendError, FeedError, GraphError, user_location
from .base import LoweredFunction

SIMULATOR_HINT = ("To run the generated kernels without a GPU, use Numba's CUDA simulator: "
                  "set NUMBA_ENABLE_CUDASIM=1 in the environment before Python starts "
                  "(slow; fine for tiny shapes and tests), or use backend='cpu'.")
TEMP_SETS_KEPT = 4  # device temporaries kept for this many different dim bindings


def _numba_cuda():
    try:
        from numba import cuda
    except ImportError as exc:  # a broken numba-cuda install
        raise BackendError(f"backend='cuda': numba.cuda cannot be imported ({exc}). "
                           "Install the GPU extra: pip install 'graphnn[gpu]'") from None
    return cuda


def simulator_enabled():
    """True when Numba's CUDA simulator stands in for the GPU (NUMBA_ENABLE_CUDASIM=1)."""
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def install_simulator_warp_functions():
    """Give Numba's CUDA simulator the warp functions the generated kernels use
    (`cuda.shfl_xor_sync` and the butterfly `cuda.shfl_sync_intrinsic`, `cuda.syncwarp`),
    which it lacks.

    The simulator runs a block's threads as Python threads and has only block-wide
    barriers, so these are built on them: every thread of the block must make the same
    calls, which the generated kernels do (their shuffles and warp barriers are
    block-uniform). A shuffle writes each thread's value, waits at a barrier and reads the
    partner lane's value."""
    import threading

    from numba.cuda.simulator import kernelapi

    fake = kernelapi.FakeCUDAModule
    if getattr(fake, "_graphnn_warp_functions", False):
        return

    def shfl_xor_sync(self, mask, value, lane_mask):
        # two exchange slots used in turn: a thread writing its next value cannot
        # overwrite one a slower thread has still to read (a barrier lies between)
        thread = threading.current_thread()
        turn = thread.__dict__.get("_graphnn_turn", 0)
        thread._graphnn_turn = turn ^ 1
        slots = thread._manager.__dict__.setdefault("_graphnn_shfl", ({}, {}))[turn]
        slots[thread.thread_id] = value
        thread.syncthreads()
        lane = thread.thread_id % 32
        return slots.get(thread.thread_id - lane + (lane ^ lane_mask), value)

    def shfl_sync_intrinsic(self, mask, mode, value, offset, clamp):
        assert mode == 3, "only the butterfly shuffle (shfl.sync.bfly) is simulated"
        return shfl_xor_sync(self, mask, value, offset), True

    def syncwarp(self, mask=0xffffffff):
        threading.current_thread().syncthreads()

    fake.shfl_xor_sync = shfl_xor_sync
    fake.shfl_sync_intrinsic = shfl_sync_intrinsic
    fake.syncwarp = syncwarp
    fake._graphnn_warp_functions = True


class CudaFunction(LoweredFunction):
    """A graph compiled to numba.cuda kernels with device-resident parameters.

        step = gn.compile(loss, updates=sgd.updates(loss, [W, b]), backend="cuda")
        for X, Y in batches:
            step(x=X, y=Y)          # W and b change on the device
        W.value                     # the trained values (copied from the device once)

    Options: `block` threads per 1-D block (a power of two, at least a warp), `tile` the
    matmul output tile edge and `thread_tile` the outputs per thread along each edge
    (default min(8, tile // 8)), `outputs_on` "host" (NumPy arrays) or "device" (device
    arrays, no copy to the host), `sync_params` copy updated parameters to the host after
    every call (by default they are copied when `.value` is first read), `generate_only`
    build `.source` without a device (see `.ptx()`). `.source` is the generated module;
    `.stats["launches_per_call"]` its kernel launches per call.

    Feeds may be device arrays (no copy):

        xd = numba.cuda.to_device(X)        # or a CuPy / PyTorch CUDA tensor
        loss = step(x=xd, y=Y)
    """

    backend = "cuda"
    # The simulator runs kernels as Python, whose math functions raise where a GPU gives NaN
    math_errors = (ValueError, OverflowError, ZeroDivisionError)

    def __init__(self, outputs, updates=None, check_finite=False, optimize_graph=True,
                 block=128, tile=64, thread_tile=None, outputs_on="host",
                 sync_params=False, generate_only=False, passes=None):
        if outputs_on not in ("host", "device"):
            raise GraphError(f"backend='cuda': outputs_on must be 'host' or 'device', got "
                             f"{outputs_on!r} (at {user_location()})")
        self.outputs_on = outputs_on
        self.cuda = _numba_cuda()
        if not generate_only and not self.cuda.is_available():
            raise BackendError("backend='cuda': no CUDA GPU was found "
                               "(numba.cuda.is_available() is False). " + SIMULATOR_HINT)
        if simulator_enabled():
            install_simulator_warp_functions()
        started = time.perf_counter()
        super().__init__(outputs, updates, check_finite, optimize_graph, passes)
        lowering = self.lowering
        hosted = next((nodes[0] for step, nodes in zip(self.program.steps,
                                                       lowering.step_nodes)
                       if isinstance(step, ir.HostCall)), None)
        if hosted is not None:
            raise BackendError(f"backend='cuda': {hosted.label()} is a gn.repeat loop, which "
                               f"runs on the numpy and cpu back ends only (at "
                               f"{user_location()})")
        try:
            self.source = cuda_codegen.generate(self.program, block=block, tile=tile,
                                                thread_tile=thread_tile)
        except ValueError as exc:
            raise BackendError(f"backend='cuda': {exc}") from None
        self.module, self.path = loader.load_module(self.source)
        self.generate_only = generate_only
        compiled = self._compile_kernels() if not generate_only and \
            not simulator_enabled() else {"kernels_compiled": 0, "kernels_loaded": 0}
        self.sync_params = sync_params
        self.stats.update({
            "passes": self.pass_report,
            "kernels": len(self.module.SIGNATURES),
            "launches_per_call": self.module.LAUNCHES,
            **compiled,
            "ptx_compiled": 0,
            "ptx_cached": 0,
            "steps": len(self.program.steps),
            "module": self.path,
            "simulator": simulator_enabled(),
            "lower_seconds": time.perf_counter() - started - self.stats["build_seconds"],
            "host_to_device": 0,
            "device_to_host": 0,
            "param_uploads": 0,
        })
        self._states = [p.state for p in self.state_nodes]
        self._updated = [i for i, p in enumerate(self.state_nodes)
                         if any(p is t for t, _ in self.update_pairs)]
        self._device_states = [None] * len(self._states)
        self._uploaded_versions = [None] * len(self._states)
        self._fetchers = {i: self._fetcher(i) for i in self._updated}
        self._host_writes = None  # ValueState.host_writes when the states were uploaded
        self._temps = {}
        self._device_consts = None
        if not generate_only:
            self._device_consts = [self._to_device(n.value) for n in lowering.consts]

    # -- kernels ---------------------------------------------------------------------------
    def _compile_kernels(self):
        """Compile every kernel now, with its signature from the module's SIGNATURES (no
        compile at the first launch, no respecialization). The kernels are declared
        `cache=True`: Numba keeps their code in its on-disk cache next to the generated
        module, so a second process that builds the same graph loads them without NVVM.
        Returns how many were compiled and how many loaded from that cache."""
        compiled = loaded = 0
        for name, sig in self.module.SIGNATURES.items():
            kernel = getattr(self.module, name)
            before = kernel.stats
            kernel.compile(sig)
            after = kernel.stats
            compiled += sum(after.cache_misses.values()) - sum(before.cache_misses.values())
            loaded += sum(after.cache_hits.values()) - sum(before.cache_hits.values())
        return {"kernels_compiled": compiled, "kernels_loaded": loaded}

    # -- transfers -------------------------------------------------------------------------
    def _to_device(self, array):
        if self._device_array(array) is not None:
            return self._device_array(array)
        array = np.ascontiguousarray(array)
        return self.cuda.to_device(array.reshape(array.shape or (1,)))

    def _device_array(self, value):
        """`value` as a Numba device array (no copy) when it lives on the device."""
        if isinstance(value, np.ndarray):
            return None
        if simulator_enabled():
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
            return value if isinstance(value, FakeCUDAArray) else None
        if self.cuda.is_cuda_array(value):
            return self.cuda.as_cuda_array(value)
        return None

    def _locked_call(self, feeds):
        device = {k: self._device_array(v) for k, v in feeds.items()
                  if not isinstance(v, np.ndarray)}
        device = {k: v for k, v in device.items() if v is not None}
        if not device:
            return super()._locked_call(feeds)
        # the names are checked as for host feeds (device arrays stand in by their shape)
        if set(feeds) != set(self.feeds.by_name):
            self.feeds.check({k: (np.empty(0) if k in device else v)
                              for k, v in feeds.items()})
        arrays, binding, where = [], S.Binding(), user_location()
        for node in self.feeds.inputs:
            value = feeds[node.name]
            if node.name in device:
                arrays.append(self._check_device_feed(node, device[node.name], binding,
                                                      where))
            else:
                arrays.append(self.feeds._convert(node, value, binding, where,
                                                  self.check_finite))
        self._check_state()
        results = self._run_checked(arrays, binding) if self.check_finite else \
            self._run(arrays, binding)
        return results[0] if self.single else tuple(results)

    def _check_device_feed(self, node, array, binding, where):
        """A device feed is used as it is: it must already have the input's dtype, rank,
        dims and C order (nothing converts it on the device). Labels of a softmax
        cross-entropy are range-checked on the host (a copy of the labels only)."""
        def fail(msg):
            raise FeedError(f"feed '{node.name}' (declared at {node.where} as "
                            f"{S.format_shape(node.sym_shape)} {node.dtype}): the device "
                            f"array {msg} (call at {where})")
        if np.dtype(array.dtype) != node.dtype:
            fail(f"has dtype {np.dtype(array.dtype)}; a device feed is not converted: "
                 f"make it {node.dtype} on the device")
        if len(array.shape) != node.ndim:
            fail(f"has shape {tuple(array.shape)} of rank {len(array.shape)}, expected "
                 f"rank {node.ndim}")
        if not array.is_c_contiguous():
            fail("is not C-contiguous; pass a contiguous copy")
        for axis, (dim, size) in enumerate(zip(node.sym_shape, array.shape)):
            if size == 0 and not isinstance(S.resolve(dim), int):
                fail(f"has shape {tuple(array.shape)}: axis {axis} is empty")
            problem = binding.bind(dim, size, f"'{node.name}' axis {axis}")
            if problem:
                fail(f"has shape {tuple(array.shape)}: axis {axis} is {size}, {problem}")
        if node.name in self.feeds.bounds and array.size:
            labels = array.copy_to_host()
            self.stats["device_to_host"] += 1
            classes, loss = self.feeds.bounds[node.name]
            if labels.min() < 0 or labels.max() >= classes:
                fail(f"holds labels from {labels.min()} to {labels.max()}; {loss.label()} "
                     f"needs labels in [0, {classes})")
        if self.check_finite and node.dtype.kind == "f" and \
                not np.isfinite(array.copy_to_host()).all():
            fail("holds NaN or Inf (check_finite=True)")
        return array

    def _fetcher(self, i):
        """The function that copies this function's device value of state `i` into the
        host array (in place): ValueState calls it on the first read after a step."""
        def fetch(state):
            host = state.host_array
            host[...] = self._device_states[i].copy_to_host().reshape(host.shape)
            self.stats["device_to_host"] += 1
        return fetch

    def params_to_device(self):
        """Copy every parameter's host value to the device (after a change made by hand in
        place, `W.value[...] = x`, which cannot be seen)."""
        for i, state in enumerate(self._states):
            self._upload(i, state)
        self._host_writes = ValueState.host_writes

    def params_to_host(self):
        """Copy the parameters this function updated on the device into their `.value` now
        (reading `W.value` does the same by itself, when it is first read)."""
        for i in self._updated:
            self._states[i].value  # noqa: B018 - the read copies a newer device value

    def _upload(self, i, state):
        self._device_states[i] = self._to_device(state.value)  # (pulls a newer device copy)
        self._uploaded_versions[i] = state.version
        self.stats["param_uploads"] += 1

    def _refresh_states(self):
        """Upload the states whose host value is newer than this function's device copy:
        a new value assigned, another cuda function's step, or a host step since."""
        host_stepped = self._host_writes != ValueState.host_writes
        for i, state in enumerate(self._states):
            if state.device_copy is not None and state.device_copy is self._fetchers.get(i):
                continue  # this function's device copy is the newest value
            if host_stepped or self._uploaded_versions[i] != state.version:
                self._upload(i, state)
        self._host_writes = ValueState.host_writes

    def _mark_device_newer(self):
        """After a step: the updated states' newest values are on this device."""
        for i in self._updated:
            state = self._states[i]
            state.version += 1  # other functions' copies of this state are now stale
            state.device_copy = self._fetchers[i]
            self._uploaded_versions[i] = state.version
        ValueState.epoch += 1  # compiled host functions re-read (and so fetch) their states

    def _temporaries(self, dims):
        temps = self._temps.pop(dims, None)
        if temps is None:
            temps = self.module.allocate(*dims)
            if len(self._temps) >= TEMP_SETS_KEPT:
                self._temps.pop(next(iter(self._temps)))
        self._temps[dims] = temps  # most recently used last
        return temps

    # -- the call --------------------------------------------------------------------------
    def _run(self, arrays, binding):
        if self.generate_only:
            raise BackendError("this cuda function was built with generate_only=True: it has "
                               "source and PTX but cannot run")
        self._refresh_states()
        dims = tuple(arrays[index].shape[axis]
                     for index, axis in self.program.dims.values())
        feeds = [self._to_device(a) for a in arrays]
        self.stats["host_to_device"] += sum(isinstance(a, np.ndarray) for a in arrays)
        outs = self.module.program(*feeds, *self._device_states, *self._device_consts,
                                   self._temporaries(dims))
        # 0-d buffers are 1-element arrays on the device
        if self.outputs_on == "device":  # copies: the buffers are reused by the next call
            results = []
            for out, buf in zip(outs, self.program.outputs):
                copy = self.cuda.device_array_like(out)
                copy.copy_to_device(out)
                results.append(copy if buf.ndim else copy.reshape(()))
        else:
            results = [out.copy_to_host().reshape(out.shape if buf.ndim else ())
                       for out, buf in zip(outs, self.program.outputs)]
            self.stats["device_to_host"] += len(results)
        if self._updated:  # also when updates were written in place (program.updates empty)
            self._mark_device_newer()
            if self.sync_params:
                self.params_to_host()
        return results

    # -- check_finite: parameters are saved and restored on the device ---------------------
    def _update_indices(self):
        position = {}
        for k, p in enumerate(self.state_nodes):
            position.setdefault(id(p), k)
        return [position[id(p)] for p, _ in self.update_pairs]

    def _save_updated_states(self):
        self._refresh_states()
        return [self._device_states[i].copy_to_host().reshape(self.state_nodes[i].shape)
                for i in self._update_indices()]

    def _updated_state_values(self):
        return [self._device_states[i].copy_to_host() for i in self._update_indices()]

    def _restore_states(self, saved):
        for i, value in zip(self._update_indices(), saved):
            self._device_states[i].copy_to_device(value.reshape(value.shape or (1,)))
            if self.sync_params:
                self._states[i].value[...] = value

    # -- PTX -------------------------------------------------------------------------------
    def ptx(self, cc=(7, 5)):
        """{kernel name: PTX text} for every generated kernel, compiled for compute
        capability `cc` with `numba.cuda.compile_ptx`. Needs the CUDA compiler library
        (NVVM) but no GPU; not available in the simulator.

        The PTX is kept in the kernel cache (`<cache>/ptx/`, named by the module, the
        kernel, `cc` and the NVVM version): another call or process that builds the same
        graph reads it back without compiling (`.stats["ptx_compiled"]`,
        `.stats["ptx_cached"]`)."""
        if simulator_enabled():
            raise BackendError("PTX cannot be made in the CUDA simulator: run without "
                               "NUMBA_ENABLE_CUDASIM")
        from numba.cuda.cudadrv import nvvm
        version = "".join(map(str, nvvm.NVVM().get_version()))
        directory = os.path.join(os.path.dirname(self.path), "ptx")
        os.makedirs(directory, exist_ok=True)
        stem = os.path.splitext(os.path.basename(self.path))[0]
        out = {}
        for name, sig in self.module.SIGNATURES.items():
            path = os.path.join(directory, f"{stem}.{name}.sm{cc[0]}{cc[1]}.nvvm{version}.ptx")
            try:
                with open(path, encoding="utf-8") as fh:
                    out[name] = fh.read()
            except OSError:
                pass
            if out.get(name, "").startswith("//") and out[name].rstrip().endswith("}"):
                self.stats["ptx_cached"] += 1
                continue
            out[name] = self.cuda.compile_ptx(getattr(self.module, name).py_func, sig,
                                              cc=cc)[0]
            loader.write_atomically(directory, path, out[name].encode("utf-8"))
            self.stats["ptx_compiled"] += 1
        return out
