"""The GPU back end (backend="cuda"): the whole program as generated numba.cuda kernels.

`CudaFunction` lowers the graph exactly like the CPU back end, then kernels/cuda.py emits
one module holding a kernel per step and a host function that launches them in order.

Where the data lives:
- constants and parameters are copied to the device once and stay there; parameter
  updates are written in place on the device;
- a call copies its feeds to the device and its outputs back, nothing else (the counts are
  in `.stats["host_to_device"]` and `.stats["device_to_host"]`);
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
import time

import numpy as np

from kernels import cuda as cuda_codegen, loader

from ..api import ValueState
from ..errors import BackendError
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

    Options: `block` threads per 1-D block (a power of two), `tile` the matmul tile edge,
    `sync_params` copy updated parameters to the host after every call (by default they
    are copied when `.value` is first read), `generate_only`
    build `.source` without a device (see `.ptx()`). `.source` is the generated module.
    """

    backend = "cuda"
    # The simulator runs kernels as Python, whose math functions raise where a GPU gives NaN
    math_errors = (ValueError, OverflowError, ZeroDivisionError)

    def __init__(self, outputs, updates=None, check_finite=False, optimize_graph=True,
                 block=128, tile=64, thread_tile=None, sync_params=False,
                 generate_only=False):
        self.cuda = _numba_cuda()
        if not generate_only and not self.cuda.is_available():
            raise BackendError("backend='cuda': no CUDA GPU was found "
                               "(numba.cuda.is_available() is False). " + SIMULATOR_HINT)
        if simulator_enabled():
            install_simulator_warp_functions()
        started = time.perf_counter()
        super().__init__(outputs, updates, check_finite, optimize_graph)
        lowering = self.lowering
        try:
            self.source = cuda_codegen.generate(self.program, block=block, tile=tile,
                                                thread_tile=thread_tile)
        except ValueError as exc:
            raise BackendError(f"backend='cuda': {exc}") from None
        self.module, self.path = loader.load_module(self.source)
        self.generate_only = generate_only
        self.sync_params = sync_params
        self.stats.update({
            "passes": self.pass_report,
            "kernels": len(self.module.SIGNATURES),
            "launches_per_call": self.module.LAUNCHES,
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

    # -- transfers -------------------------------------------------------------------------
    def _to_device(self, array):
        array = np.ascontiguousarray(array)
        return self.cuda.to_device(array.reshape(array.shape or (1,)))

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
        outs = self.module.program(*feeds, *self._device_states, *self._device_consts,
                                   self._temporaries(dims))
        # 0-d buffers are 1-element arrays on the device
        results = [out.copy_to_host().reshape(out.shape if buf.ndim else ())
                   for out, buf in zip(outs, self.program.outputs)]
        self.stats["host_to_device"] += len(feeds)
        self.stats["device_to_host"] += len(results)
        if self._updated:  # also when updates were written in place (program.updates empty)
            self._mark_device_newer()
            if self.sync_params:
                self.params_to_host()
        return results

    # -- check_finite: parameters are saved and restored on the device ---------------------
    def _update_indices(self):
        return [self.state_nodes.index(p) for p, _ in self.update_pairs]

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
        (NVVM) but no GPU; not available in the simulator."""
        if simulator_enabled():
            raise BackendError("PTX cannot be made in the CUDA simulator: run without "
                               "NUMBA_ENABLE_CUDASIM")
        return {name: self.cuda.compile_ptx(getattr(self.module, name).py_func, sig, cc=cc)[0]
                for name, sig in self.module.SIGNATURES.items()}
