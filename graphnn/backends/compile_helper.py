"""A forked copy of this process that compiles library-mode kernels into Numba's disk cache
while this process compiles others (backends/cpu.py, a library-mode first call).

A large graph forks its helper as soon as `gn.compile` has the graph (`early=True`): while
this process runs the passes, lowers the graph and writes the driver (about half a second
for 7000 steps), the helper pays Numba's start-up (about 0.2 s before its first kernel,
which this process pays at its own first kernel). A smaller graph forks it at its first
call, once the kernels' argument types are known.

At the first call this process sends the helper the kernels to compile (the path of each
kernel's module and the Numba types of its arguments, costliest first) and both take them
from one queue, a pipe of 4-byte kernel numbers: whichever is free takes the next, so the
two finish together whatever each kernel costs. Two end marks close the queue (one for
each reader: a process forked meanwhile may hold the pipe's write end, so its end of file
would never come). The helper reports the kernels it compiled as JSON and exits; this
process then loads them from the cache. A helper nobody sends work to exits after
IDLE_SECONDS, at end of file, or when this process is gone; one this process lets go is
killed and reaped.
"""
import json
import os
import pickle
import select
import signal
import struct
import sys
import time
import warnings

# Seconds a helper waits for its work before it exits (the function was never called).
IDLE_SECONDS = 120.0

_RECORD = struct.Struct("<i")
_END = -1
# the file descriptors of this process's open helpers (a helper forked later closes them)
_OPEN = {}
# helpers closed before they exited: reaped at the next fork (no zombies left behind)
_UNREAPED = set()


class CompileHelper:
    """The forked helper, from this process's side. `pid` is None when the fork failed."""

    def __init__(self, early):
        self.early, self.pid, self.sent, self._gone = early, None, False, False
        _reap()
        pipes = []
        try:
            for _ in range(3):
                pipes.append(os.pipe())
            pid = os.fork()
        except OSError:  # (out of file descriptors or processes: one process compiles)
            for fd in (fd for pipe in pipes for fd in pipe):
                os.close(fd)
            return
        jobs, queue, report = pipes
        if pid == 0:  # the helper
            status = 1
            try:
                for fd in [fd for theirs in _OPEN.values() for fd in theirs]:
                    _close(fd)
                os.close(jobs[1])
                os.close(queue[1])
                os.close(report[0])
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # (this process handles ^C)
                warnings.simplefilter("ignore")  # (it writes nothing)
                _serve(jobs[0], queue[0], report[1], early, os.getppid())
                status = 0
            finally:
                os._exit(status)
        os.close(jobs[0])
        os.close(report[1])
        self.pid, self.started = pid, time.monotonic()
        self._jobs, self._queue_r, self._queue_w, self._report = jobs[1], queue[0], queue[1], \
            report[0]
        _OPEN[pid] = (self._jobs, self._queue_r, self._queue_w, self._report)

    def alive(self):
        """Whether the helper still waits for its work."""
        return not self.sent and self._running()

    def _running(self):
        """Whether the helper has not exited (reaped here when it has). Once it has, its
        process id may be another process's: it is never signalled again."""
        if self.pid is None or self._gone:
            return False
        try:
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                return True
        except ChildProcessError:  # (reaped by the system: SIGCHLD ignored)
            pass
        self._gone = True
        return False

    def share(self, kernels):
        """Send the helper `kernels`, [(module path, argument types)], in the order to take
        them, and fill the queue. False when the helper is gone (nothing was sent)."""
        if not self.alive():
            return False
        data = pickle.dumps(list(kernels), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(self._jobs, struct.pack("<q", len(data)) + data)
            _write_all(self._queue_w, b"".join(_RECORD.pack(k) for k in range(len(kernels)))
                       + _RECORD.pack(_END) * 2)
        except OSError:  # (it exited meanwhile: its idle time was up)
            return False
        finally:
            self.sent = True
            _close(self._jobs)
            _close(self._queue_w)
        return True

    def next(self):
        """The number of the next kernel to compile in this process; None at the end."""
        data = os.read(self._queue_r, _RECORD.size)
        if len(data) < _RECORD.size:
            return None
        k = _RECORD.unpack(data)[0]
        return None if k == _END else k

    def finish(self, report_of):
        """{kernel number: seconds} of the kernels the helper compiled (report_of(pid, fd)
        reads its report, killing a stalled helper); the helper is then reaped."""
        try:
            data = report_of(self.pid, self._report)
        finally:
            self.close()
        try:
            return {int(k): float(t) for k, t in json.loads(data or b"{}").items()}
        except (ValueError, TypeError, AttributeError):
            return {}

    def close(self):
        """Stop the helper (what it has not reported is not needed: it has written nothing
        but whole cache entries) and reap it (within a second: else at the next fork)."""
        if self.pid is None or self.pid not in _OPEN:
            return
        for fd in _OPEN.pop(self.pid):
            _close(fd)
        if not self._running():
            return
        try:  # (not reaped yet: the id is still the helper's)
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        deadline = time.monotonic() + 1.0
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.001)
        if not self._gone:
            _UNREAPED.add(self.pid)


def _serve(jobs, queue, report, warm, parent):
    """The helper's life: warm Numba up, wait for the kernels, compile them from the queue,
    report the seconds of each one compiled into the disk cache."""
    if warm:
        _warm_up()
    data = _read_message(jobs, parent)
    if data is None:
        return
    from .cpu import _cache_on_disk, _compile
    kernels, done = pickle.loads(data), {}
    while True:
        record = os.read(queue, _RECORD.size)
        if len(record) < _RECORD.size:
            break
        k = _RECORD.unpack(record)[0]
        if k == _END:
            break
        started = time.perf_counter()
        try:
            path, types = kernels[k]
            dispatcher = _kernel_at(path)
            _compile(dispatcher, types)
        except Exception:  # (this process compiles it at its first call, and raises there)
            continue
        if _cache_on_disk(dispatcher):  # (else the first call compiles it)
            done[k] = time.perf_counter() - started
    _write_all(report, json.dumps(done).encode())


def _read_message(fd, parent):
    """A length-prefixed message from `fd`; None at end of file, when IDLE_SECONDS pass
    without one, or when the process that forked this one is gone."""
    data, wanted, since = b"", None, time.monotonic()
    while wanted is None or len(data) < wanted + 8:
        if not select.select([fd], [], [], 1.0)[0]:
            if os.getppid() != parent or time.monotonic() - since > IDLE_SECONDS:
                return None
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
        if wanted is None and len(data) >= 8:
            wanted = struct.unpack("<q", data[:8])[0]
    return data[8:8 + wanted]


def _kernel_at(path):
    """The `kernel` of the generated module at `path` (imported here if it is not yet)."""
    from kernels import loader
    name = os.path.splitext(os.path.basename(path))[0]
    module = sys.modules.get(name)
    if module is None:
        with open(path, encoding="utf-8") as fh:
            module = loader.load_module(fh.read())[0]
    return module.kernel


def _warm_up():
    """Compile a small loop nest on float32 arrays (not cached): Numba's first compile in a
    process sets up its compiler, typing and LLVM target, about 0.2 s the first kernel
    would otherwise pay."""
    import math

    import numba
    import numpy as np

    @numba.njit(cache=False, fastmath=False)
    def warm(a, out, alpha):
        total = np.float32(0.0)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                v = max(a[i, j] * alpha, np.float32(0.0)) + np.float32(math.tanh(a[i, j]))
                out[i, j] = v
                total += v
        return total
    try:
        warm(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), np.float32(1.0))
    except Exception:  # (only time is at stake)
        pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _reap():
    for pid in list(_UNREAPED):
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                _UNREAPED.discard(pid)
        except ChildProcessError:
            _UNREAPED.discard(pid)


def pending():
    """How many helpers of this process are open."""
    return len(_OPEN)
