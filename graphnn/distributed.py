"""Data-parallel training over many processes with MPI (`gn.distributed`, extra `[mpi]`).

Every process (an MPI *rank*) builds the same graph and compiles the same training step,
split into two compiled calls so that the gradients can travel between them:

1. `gradient_step`: forward and backward pass on this rank's shard of the global batch; its
   ONE output is a flat buffer holding every parameter's gradient, then the loss and the
   metrics, each multiplied by the shard's share of the batch (rows / global batch rows);
2. `comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)` sums the buffers of all ranks, which
   gives the gradient of the mean loss over the whole global batch (and the global loss);
3. `update_step`: the optimizer's update graph, whose gradients are `gn.input` slices of
   that buffer (`Optimizer.apply_updates`); it writes parameters and moment estimates in
   place, the same arithmetic on the same numbers on every rank.

Parameters and optimizer state are broadcast from rank 0 at the start, so every rank holds
bit-identical values after every step. Without `mpirun` (no MPI environment), the same code
runs as one process: no mpi4py import, no communication.

    trainer = gn.distributed.DataParallel(loss, model.params, gn.optim.Adam(0.002),
                                          metrics=[acc])
    loss_value, acc_value = trainer(x=X_batch, y=y_batch)   # the GLOBAL batch, on every rank

Launch: `mpirun -n 2 python examples/mlp_digits_distributed.py`. See docs/DISTRIBUTED.md.
"""
import contextlib
import hashlib
import os
import sys
import time
import traceback

import numpy as np

from .autodiff import grad
from .api import input as declare_input
from .errors import GraphError, user_location
from .ops import cast, concat, reshape, slice_axis

# set by `mpirun`/`mpiexec` (Open MPI, MPICH/Hydra, PMIx launchers) in every rank's environment
MPI_ENVIRONMENT = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
GRADIENTS_INPUT = "allreduced_gradients"


def launched_by_mpirun():
    """True when this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    return any(name in os.environ for name in MPI_ENVIRONMENT)


def world():
    """(comm, rank, size): `MPI.COMM_WORLD` under mpirun, (None, 0, 1) in a plain process.

    A plain `python script.py` never imports mpi4py, so it runs where MPI is not installed.
    """
    if not launched_by_mpirun():
        return None, 0, 1
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise GraphError("this process was started by mpirun, but mpi4py cannot be imported "
                         f"({exc}); install it with: pip install 'graphnn[mpi]'") from None
    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


def shard_bounds(n, rank, size):
    """The rows [start, stop) of a global batch of `n` rows that `rank` of `size` trains on:
    contiguous slices, sizes differing by at most one (equal when `size` divides `n`)."""
    return n * rank // size, n * (rank + 1) // size


@contextlib.contextmanager
def abort_on_error(comm=None, what="training"):
    """Turn an exception on one rank into MPI_Abort of the whole job.

    Without it, the other ranks would wait forever in their next collective call. With it,
    the failing rank prints its traceback and a one-line reason, and MPI ends every rank;
    `mpirun` exits non-zero. In a single process the exception propagates unchanged.

        with gn.distributed.abort_on_error(comm):
            main()
    """
    try:
        yield
    except BaseException as exc:  # KeyboardInterrupt too: the other ranks must not wait
        if comm is None or comm.Get_size() == 1:
            raise
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        traceback.print_exc()
        rank, size = comm.Get_rank(), comm.Get_size()
        print(f"graphnn.distributed: rank {rank} of {size} failed during {what}: "
              f"{type(exc).__name__}: {exc}; aborting all {size} ranks (MPI_Abort)",
              file=sys.stderr, flush=True)
        comm.Abort(1)


class DataParallel:
    """One data-parallel training step over all MPI ranks; call it like a compiled step.

    loss:      a scalar node, a MEAN over the batch (so shard gradients average exactly).
    params:    the parameters to train (e.g. `model.params`), all of one float dtype.
    optimizer: a `gn.optim` optimizer; its update graph is compiled once from gradient
               inputs (`Optimizer.apply_updates`).
    metrics:   further scalar nodes that are means over the batch (e.g. accuracy); returned
               after the loss, averaged over the global batch like it.
    comm:      an mpi4py communicator, or "world" (default: COMM_WORLD under mpirun, no
               communication in a plain process), or None (one process).
    backend:   "cpu" (generated Numba code) or "numpy".

    `trainer(**feeds)` takes the GLOBAL batch (every rank passes the same arrays, e.g. all
    ranks shuffle with the same seed); rank r trains on rows `shard_bounds(n, r, size)`.
    It returns the global-batch loss (and metrics), so `gn.fit(trainer, data, ...)` works.
    With `checkpoint=path` and `checkpoint_every=K`, rank 0 writes every state value to
    `path` (.npz) after every K-th step; `restore(path)` loads it on every rank.
    """

    def __init__(self, loss, params, optimizer, metrics=(), comm="world", backend="cpu",
                 checkpoint=None, checkpoint_every=0):
        from .backends import compile
        if isinstance(comm, str) and comm == "world":
            comm, _, _ = world()
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.params = list(params)
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise GraphError(f"DataParallel: parameters of one dtype are needed for one "
                             f"gradient buffer, got {sorted(map(str, dtypes))} "
                             f"(at {user_location()})")
        self.dtype = dtypes.pop()
        self.outputs = [loss] + list(metrics)
        for node in self.outputs:
            if node.shape != ():
                raise GraphError(f"DataParallel: {node.label()} must be a scalar (a mean over "
                                 f"the batch), not of shape {node.shape} "
                                 f"(at {user_location()})")
        self.backend = backend
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.gradient_count = int(self.offsets[-1])
        self.buffer_bytes = (self.gradient_count + len(self.outputs)) * self.dtype.itemsize

        # (1) loss + gradients, packed into one flat buffer by the compiled code itself
        pieces = [reshape(g, (-1,)) for g in grad(loss, self.params)]
        pieces += [reshape(o if o.dtype == self.dtype else cast(o, self.dtype), (1,))
                   for o in self.outputs]
        self.gradient_step = compile(concat(pieces), backend=backend)

        # (3) the optimizer's update from the averaged gradients, fed as one input
        flat = declare_input(GRADIENTS_INPUT, (self.gradient_count,), dtype=self.dtype)
        grads = [reshape(slice_axis(flat, 0, int(a), int(b)), p.shape)
                 for p, a, b in zip(self.params, self.offsets[:-1], self.offsets[1:])]
        self.update_step = compile([], updates=optimizer.apply_updates(self.params, grads),
                                   backend=backend)
        self.state_nodes = list({id(n): n for n in self.params + self.update_step.state_nodes}
                                .values())
        self.steps_done = 0
        self.checkpoint, self.checkpoint_every = checkpoint, int(checkpoint_every)
        self.seconds = {"compute": 0.0, "allreduce": 0.0, "update": 0.0}
        self.broadcast_state()

    # -- the step -------------------------------------------------------------------------

    def __call__(self, **feeds):
        with abort_on_error(self.comm, f"step {self.steps_done + 1}"):
            values = self._step(feeds)
            self.steps_done += 1
            if self.checkpoint and self.checkpoint_every and \
                    self.steps_done % self.checkpoint_every == 0:
                self.save(self.checkpoint)
        return values[0] if len(values) == 1 else tuple(values)

    def _step(self, feeds):
        sizes = {len(np.asarray(v)) for v in feeds.values() if np.ndim(v)}
        if len(sizes) != 1:
            raise GraphError(f"DataParallel: every feed needs the same number of rows (the "
                             f"global batch), got {sizes or 'none'} (at {user_location()})")
        n = sizes.pop()
        start, stop = shard_bounds(n, self.rank, self.size)
        started = time.perf_counter()
        if stop > start:
            shard = {k: v[start:stop] if np.ndim(v) else v for k, v in feeds.items()}
            buffer = np.asarray(self.gradient_step(**shard))
            if self.size > 1:
                # each rank's share of the global mean; 1/size exactly when shards are equal
                buffer *= self.dtype.type((stop - start) / n)
        else:  # fewer rows than ranks: this rank contributes nothing
            buffer = np.zeros(self.gradient_count + len(self.outputs), self.dtype)
        reduced = time.perf_counter()
        if self.size > 1:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        updating = time.perf_counter()
        self.update_step(**{GRADIENTS_INPUT: buffer[:self.gradient_count]})
        done = time.perf_counter()
        self.seconds["compute"] += reduced - started
        self.seconds["allreduce"] += updating - reduced
        self.seconds["update"] += done - updating
        return [self.dtype.type(v) for v in buffer[self.gradient_count:]]

    # -- keeping ranks identical ------------------------------------------------------------

    def broadcast_state(self, root=0):
        """Copy every parameter and optimizer variable from `root` to all ranks, in place."""
        if self.size == 1:
            return
        for node in self.state_nodes:
            self.comm.Bcast(node.state.value.reshape(-1), root=root)

    def state_hash(self):
        """SHA-256 (hex) of every parameter and optimizer variable, by name, in a fixed order."""
        digest = hashlib.sha256()
        for node in sorted(self.state_nodes, key=lambda n: n.name):
            digest.update(node.name.encode())
            digest.update(np.ascontiguousarray(node.state.value).tobytes())
        return digest.hexdigest()

    def gather_hashes(self):
        """Every rank's `state_hash()`, a list on rank 0 (None on the others)."""
        mine = self.state_hash()
        return [mine] if self.size == 1 else self.comm.gather(mine, root=0)

    # -- checkpoints ------------------------------------------------------------------------

    def save(self, path):
        """Rank 0 writes every state value and `steps_done` to `path` (.npz), atomically
        (a crash while writing leaves the previous checkpoint). Returns the path."""
        path = os.fspath(path)
        if self.rank == 0:
            arrays = {f"state/{n.name}": n.state.value for n in self.state_nodes}
            partial = path + ".partial.npz"
            np.savez(partial, steps_done=np.int64(self.steps_done), **arrays)
            os.replace(partial, path)
        return path

    def restore(self, path):
        """Load a checkpoint written by `save` on rank 0 and broadcast it to every rank.
        Returns `steps_done` (the number of steps the checkpoint had trained)."""
        with abort_on_error(self.comm, f"restoring {path}"):
            return self._restore(path)

    def _restore(self, path):
        steps = np.zeros(1, np.int64)
        if self.rank == 0:
            with np.load(os.fspath(path), allow_pickle=False) as saved:
                for node in self.state_nodes:
                    key = f"state/{node.name}"
                    if key not in saved:
                        raise GraphError(f"checkpoint {path} has no value for {node.label()}")
                    node.value = saved[key]
                steps[0] = saved["steps_done"]
        if self.size > 1:
            self.comm.Bcast(steps, root=0)
        self.broadcast_state()
        self.steps_done = int(steps[0])
        return self.steps_done


def global_batches(n, batch_size, epochs, seed=0):
    """(step, epoch, row indices) of every global batch, the order `gn.fit(..., seed=seed)`
    uses: a new permutation per epoch from `np.random.default_rng(seed)`. Every rank draws
    the same order; skipping steps below a restored `steps_done` resumes exactly."""
    rng = np.random.default_rng(seed)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield step, epoch, order[start:start + batch_size]
            step += 1
