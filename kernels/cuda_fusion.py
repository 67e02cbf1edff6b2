"""Launch planning for the GPU back end: which kernel-IR steps run in one kernel launch.

A launch costs a few microseconds of host and driver time whatever it computes, so the
GPU generator (kernels/cuda.py) does not launch one kernel per step. `plan(program)`
groups the steps into `Launch`es:

- **chain**: an anchor step (elementwise, matmul, reduction, convolution/pooling window,
  or a place) and the elementwise steps after it that are computed at the same output
  point: a matmul epilogue (bias, activation, an optimizer's update written into W), a
  reduction finished by an update (a bias gradient and the bias step), several
  elementwise outputs in one pass (Adam's m, v and W). A tail step reads what the chain
  wrote only at its own point (the value is in a register); nothing the anchor reads at
  other points is written by the chain.
- **rows**: steps over the same rows, one warp per row: row reductions (max, sum: warp
  shuffles), elementwise steps over a row or per row, and whole reductions of row-local
  values (one block then, so the total is summed in the block). Softmax, log-softmax and
  softmax cross-entropy with its gradient are one launch.
- **single**: any other step (argmax masks), or a run of scalar steps that could not ride
  along with a neighbour.

Scalar steps (one element: Adam's step counter and bias corrections) are moved as early as
their data allows and run by the first thread of a neighbouring launch (`Launch.side`)
when that launch neither reads what they write nor writes what they read.

Reshapes are views made on the host: they are hoisted out of the sequence (`Plan.views`).

`Plan.stores[id(step)]` says whether a step's result must be written to memory: a value
rewritten later in its chain, or read by nobody after its launch (not an output, not a
state), stays in a register.
"""
from dataclasses import dataclass, field

from . import ir


def mem(buf):
    """The memory a buffer names: a view reads and writes its base's memory."""
    return buf.base.name if buf.base is not None else buf.name


def reads(step):
    """Memories a step reads (a matmul with beta != 0 also reads its output)."""
    out = {mem(b) for b in ir.step_reads(step)}
    if isinstance(step, ir.Matmul) and step.beta != 0:
        out.add(mem(step.out))
    return out


def writes(step):
    return set() if isinstance(step, ir.Reshape) else {mem(step.out)}


def squeeze(shape):
    return tuple(d for d in shape if d != 1)


def is_scalar(step):
    return isinstance(step, ir.Elementwise) and all(d == 1 for d in step.out.shape)


def loopvars(n):
    return tuple(f"i{k}" for k in range(n))


def is_identity(load, out):
    """The load reads `load.buffer` at the loop's own point (same shape, same index)."""
    return tuple(load.buffer.shape) == tuple(out.shape) and \
        tuple(load.index) == loopvars(out.ndim)


def conflict(a, b):
    """Steps a and b may not run concurrently (or swap): one writes what the other uses."""
    return bool(writes(a) & (reads(b) | writes(b)) or reads(a) & writes(b))


@dataclass
class Launch:
    kind: str                                   # chain | rows | single | scalars
    steps: list
    side: list = field(default_factory=list)    # scalar steps run by the first thread
    end: int = 0                                # index after its last step in Plan.seq
    rows: object = None                         # the row count of a rows launch


@dataclass
class Plan:
    views: list          # Reshape steps, in order (host-side views, made first)
    seq: list            # the other steps, in their final order
    launches: list
    stores: dict         # id(step) -> bool: write its result to memory


def _hoist_scalars(seq):
    """Move every scalar step as early as no conflict forbids."""
    out = []
    for step in seq:
        pos = len(out)
        if is_scalar(step):
            while pos > 0 and not conflict(out[pos - 1], step):
                pos -= 1
        out.insert(pos, step)
    return out


def _anchor_reads_elsewhere(step):
    """Memories the anchor of a chain reads at points other than its output point."""
    if isinstance(step, ir.Elementwise):
        return {mem(l.buffer) for l in step.expr.loads.values()
                if not is_identity(l, step.out)}
    if isinstance(step, ir.Matmul):
        return {mem(step.a), mem(step.b)}
    return {mem(b) for b in ir.step_reads(step)}


CHAIN_ANCHORS = (ir.Elementwise, ir.Matmul, ir.Reduce, ir.Window, ir.Place)


def _chain(seq, i):
    anchor = seq[i]
    if not isinstance(anchor, CHAIN_ANCHORS):
        return None
    point = squeeze(anchor.out.shape)
    written = {mem(anchor.out)}
    elsewhere = _anchor_reads_elsewhere(anchor)
    if written & elsewhere:
        return [anchor]
    steps = [anchor]
    for tail in seq[i + 1:]:
        if not isinstance(tail, ir.Elementwise) or is_scalar(tail) or \
                squeeze(tail.out.shape) != point:
            break
        loads = list(tail.expr.loads.values())
        if any(mem(l.buffer) in written and not is_identity(l, tail.out) for l in loads):
            break
        if mem(tail.out) in elsewhere:
            break
        steps.append(tail)
        written.add(mem(tail.out))
        elsewhere |= {mem(l.buffer) for l in loads if not is_identity(l, tail.out)}
    return steps


def row_kind(step, rows):
    """How `step` runs in a row kernel over `rows` rows, or None."""
    if isinstance(step, ir.Elementwise):
        shape = step.out.shape
        if 1 <= len(shape) <= 2 and shape[0] == rows and rows != 1:
            return "row" if len(shape) == 1 or shape[1] == 1 else "cols"
        return None
    if isinstance(step, ir.Reduce):
        dom = step.domain
        if not dom or dom[0] != rows or rows == 1 or len(dom) > 2:
            return None
        if len(dom) == 2 and tuple(step.axes) == (1,):
            return "rowreduce"
        if tuple(step.axes) == tuple(range(len(dom))):
            return "total"
    return None


def _step_loads(step):
    loads = list(step.expr.loads.values())
    if isinstance(step, ir.Reduce) and step.post is not None:
        loads += [("post", l) for l in step.post.loads.values()]
    return loads


def _row_local(load, rows):
    buf = load.buffer
    return buf.ndim >= 1 and buf.shape[0] == rows and load.index[0] == "i0" and \
        (buf.base is None or (buf.base.ndim >= 1 and buf.base.shape[0] == rows))


def _rows(seq, i):
    first = seq[i]
    if isinstance(first, ir.Elementwise):
        rows = first.out.shape[0] if first.out.ndim else None
    elif isinstance(first, ir.Reduce):
        rows = first.domain[0] if first.domain else None
    else:
        return None
    steps, written, elsewhere, totals = [], set(), set(), set()
    for step in seq[i:]:
        kind = row_kind(step, rows)
        if kind is None or is_scalar(step):
            break
        ok = True
        for load in _step_loads(step):
            post = isinstance(load, tuple)
            load = load[1] if post else load
            m = mem(load.buffer)
            if m in totals or (post and kind == "total" and m in written):
                ok = False
            elif m in written and not _row_local(load, rows):
                ok = False
        if not ok or mem(step.out) in elsewhere:
            break
        steps.append(step)
        written.add(mem(step.out))
        if kind == "total":
            totals.add(mem(step.out))
        for load in _step_loads(step):
            load = load[1] if isinstance(load, tuple) else load
            if not _row_local(load, rows):
                elsewhere.add(mem(load.buffer))
    if len(steps) < 2 or not any(row_kind(s, rows) == "rowreduce" for s in steps):
        return None
    return steps, rows


def plan(program):
    """The launches of `program` (see the module docstring)."""
    views = [s for s in program.steps if isinstance(s, ir.Reshape)]
    seq = _hoist_scalars([s for s in program.steps if not isinstance(s, ir.Reshape)])
    launches, pending = [], []

    def fits(launch, scalar):
        return not any(conflict(t, scalar) for t in launch.steps)

    i = 0
    while i < len(seq):
        step = seq[i]
        if is_scalar(step):
            if not pending and launches and launches[-1].kind != "scalars" and \
                    fits(launches[-1], step):
                launches[-1].side.append(step)
            else:
                pending.append(step)
            i += 1
            continue
        found, rows = _rows(seq, i) or (None, None)
        if found is not None:
            steps, kind = found, "rows"
        else:
            steps, kind = _chain(seq, i) or [step], "chain"
        if len(steps) == 1 and not isinstance(step, CHAIN_ANCHORS):
            kind = "single"
        launch = Launch(kind, steps, end=i + len(steps), rows=rows)
        if pending:
            if all(fits(launch, s) for s in pending):
                launch.side = pending
            else:
                launches.append(Launch("scalars", [], side=pending, end=i))
            pending = []
        launches.append(launch)
        i += len(steps)
    if pending:
        launches.append(Launch("scalars", [], side=pending, end=len(seq)))
    return Plan(views, seq, launches, _stores(program, seq, launches))


def _stores(program, seq, launches):
    final = {mem(b) for b in program.outputs} | {mem(v) for _, v in program.updates} | \
        {b.name for b in program.states}

    def live_after(m, j):
        for step in seq[j:]:
            if m in reads(step):
                return True
            if m in writes(step):
                return False
        return m in final

    stores = {}
    for launch in launches:
        for s in launch.side:
            stores[id(s)] = True
        for k, step in enumerate(launch.steps):
            m = mem(step.out)
            if launch.kind == "rows" and row_kind(step, launch.rows) == "cols":
                stores[id(step)] = True  # read back from memory by the row's later steps
                continue
            rewritten = launch.kind == "chain" and any(
                mem(t.out) == m for t in launch.steps[k + 1:])
            stores[id(step)] = not rewritten and live_after(m, launch.end)
    return stores
