"""GPU back end: a kernel-IR `Program` becomes ONE generated Python module holding the
`numba.cuda` kernels of its launches and two host functions:

- `allocate(d0, d1, ...)` makes the device temporaries for one binding of the dim names;
- `program(inputs..., states..., consts..., temps)` launches every kernel in order
  (forward, backward, parameter updates written in place into the state buffers) and
  returns the output device arrays. Nothing is copied between host and device in there.

Which steps share a launch is decided by kernels/cuda_fusion.py (matmul epilogues,
multi-output elementwise passes, reductions finished by their updates, row kernels for
softmax-like chains, scalar steps run by a neighbour's first thread). Kernel schemes:

- elementwise, windows, places: a grid-stride loop over the anchor's flat output index,
  one thread per element; the chain's tail steps run at the same element;
- reduce: one thread block per output element; each thread folds a strided part of the
  reduced domain, then warp shuffles (`shfl_xor`) and one shared-memory step across the
  block's warps (BLOCK must be a power of two, at least a warp);
- rows: one warp per row, lanes striding over the columns, row reductions by warp
  shuffles; whole reductions of row values are finished in the (single) block;
- matmul: TILE x TILE output tiles per block, THREAD_TILE x THREAD_TILE outputs per
  thread held in registers (THREAD_TILE**2 FMAs per 2*THREAD_TILE shared loads), operands
  staged through shared memory with coalesced global reads for either layout (transposes
  are read in place); the epilogue (scaling, accumulation into the output) is applied from
  the registers, and a chain's tail to the tile staged through shared memory (emitted
  once, not once per register);
- argmax mask: one thread per kept element, scanning the reduced axes.

0-d buffers live on the device as 1-element arrays. Floating constants are typed
(`numba.float32(...)`), so float32 graphs hold no float64 arithmetic; a power by a
constant 0.5, -0.5, 1, -1 or 2 is a sqrt, a reciprocal or a product (no `powf` call).
`SIGNATURES` in the module gives each kernel's argument types: kernels are compiled
eagerly with them (cache=True: Numba's on-disk cache next to the module), and
`cuda.compile_ptx` can compile them without a GPU.
"""
import ast
import inspect
import textwrap

import numba
import numpy as np

from . import cuda_fusion as fusion
from . import ir, random
from .cuda_grouped import ELEMENT_HELPERS as _GROUPED_HELPERS
from .cuda_windows import ELEMENT_HELPERS as _WINDOW_HELPERS

ELEMENT_HELPERS = {**_WINDOW_HELPERS, **_GROUPED_HELPERS}

GENERATOR_VERSION = "cuda-6"
BATCH_TILE = 16  # the tile of a stack of matrix products (ir.BatchMatmul)
MAX_BLOCKS = 1024          # grid-stride loops need no more blocks than this
WARP = 32
FULL_MASK = "0xffffffff"
BK = 8                     # the matmul's k-depth per shared-memory stage


def default_thread_tile(tile):
    """Outputs per thread along each axis of a matmul tile (8 for the default 64)."""
    return max(1, min(8, tile // 8))


def generate(program, block=128, tile=64, thread_tile=None):
    """The module source for `program`: `block` threads per 1-D block, `tile` x `tile`
    matmul output tiles with `thread_tile` x `thread_tile` outputs per thread."""
    if block < WARP or block > 1024 or block & (block - 1):
        raise ValueError(f"block size must be a power of two from {WARP} (a warp) to "
                         f"1024, got {block}")
    thread_tile = default_thread_tile(tile) if thread_tile is None else thread_tile
    if thread_tile < 1 or tile < 1 or tile % thread_tile or \
            (tile // thread_tile) ** 2 > 1024:
        raise ValueError(f"the matmul tile ({tile}) must be a multiple of thread_tile "
                         f"({thread_tile}) with at most 1024 threads per tile")
    gen = _Generator(program, block, tile, thread_tile)
    return gen.module()


_POW_SPECIAL = {0.5: "sqrt({x})", -0.5: "({one} / sqrt({x}))", 1.0: "{x}",
                -1.0: "({one} / {x})", 2.0: "({x} * {x})"}


# Functions a scalar expression may call that the device code gets inlined (statements
# before the expression), not as device functions: `cuda.compile_ptx` of a kernel that
# calls a device function needs a GPU driver, and kernels must compile to PTX without one.
INLINED = {"random_bits": random.random_bits}


class _InlineCalls(ast.NodeTransformer):
    """Replace each call of an INLINED function by a variable, collecting the statements
    that compute it: the function's body with its parameters bound to the arguments and
    every local name prefixed (`rb<n>_`) so that two calls, or the kernel's own names,
    never collide."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.statements = []

    def visit_Call(self, node):
        self.generic_visit(node)
        if not (isinstance(node.func, ast.Name) and node.func.id in INLINED):
            return node
        func = ast.parse(textwrap.dedent(inspect.getsource(INLINED[node.func.id]))).body[0]
        tag = f"{self.prefix}{len(self.statements)}_"
        local = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and
                 isinstance(n.ctx, ast.Store)} | {a.arg for a in func.args.args}
        for param, arg in zip(func.args.args, node.args):
            self.statements.append(ast.Assign([ast.Name(tag + param.arg, ast.Store())], arg))
        *body, result = func.body
        assert isinstance(result, ast.Return)

        class Rename(ast.NodeTransformer):
            def visit_Name(self, name):
                if name.id in local:
                    name.id = tag + name.id
                return name
        for statement in body:
            self.statements.append(Rename().visit(statement))
        value = tag + "result"
        self.statements.append(ast.Assign([ast.Name(value, ast.Store())],
                                          Rename().visit(result.value)))
        return ast.Name(value, ast.Load())


def _inline_calls(code, prefix):
    """(statements computing the INLINED calls of `code`, `code` with each call replaced
    by its result's variable), both source text."""
    if not any(f"{name}(" in code for name in INLINED):
        return [], code
    inliner = _InlineCalls(prefix)
    tree = inliner.visit(ast.parse(code))
    lines = [ast.unparse(ast.fix_missing_locations(s)) for s in inliner.statements]
    return lines, ast.unparse(ast.fix_missing_locations(tree))


def _constant(node):
    """The float value of a constant node (`2.0`, `T(0.5)`, `numba.float32(-1.0)`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _constant(node.operand)
        return None if value is None else -value
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        return _constant(node.args[0])
    return None


class _DeviceExpr(ast.NodeTransformer):
    """Scalar-expression source -> device source: `T(...)` becomes `numba.<dtype>(...)`,
    np.inf/np.nan become math.inf/math.nan, two-argument max/min become conditional
    expressions with Python's semantics (the built-in CUDA target compiles builtin max/min
    through a path that needs a device, so `cuda.compile_ptx` could not check them), a
    power by a cheap constant becomes sqrt or products, and names are renamed by
    `rename` (name -> replacement source)."""

    def __init__(self, dtype, rename=None):
        self.dtype = dtype
        self.rename = rename or {}

    def visit_Name(self, node):
        if node.id in self.rename:
            new = ast.parse(self.rename[node.id], mode="eval").body
            if isinstance(node.ctx, ast.Store):
                assert isinstance(new, ast.Name), node.id
                return ast.Name(new.id, ast.Store())
            return new
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "T":
            node.func = ast.Attribute(ast.Name("numba", ast.Load()), self.dtype, ast.Load())
        elif isinstance(node.func, ast.Name) and node.func.id in ("max", "min") and \
                len(node.args) == 2 and not node.keywords:
            a, b = node.args
            op = ast.Gt() if node.func.id == "max" else ast.Lt()
            return ast.IfExp(ast.Compare(b, [op], [a]), b, a)
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        exponent = _constant(node.right) if isinstance(node.op, ast.Pow) else None
        if exponent in _POW_SPECIAL and np.dtype(self.dtype).kind == "f" and \
                (exponent != 2.0 or isinstance(node.left, ast.Name)):
            code = _POW_SPECIAL[exponent].format(x=ast.unparse(node.left),
                                                 one=f"numba.{self.dtype}(1)")
            return ast.parse(code, mode="eval").body
        return node

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == "np" and \
                node.attr in ("inf", "nan"):
            return ast.Attribute(ast.Name("math", ast.Load()), node.attr, ast.Load())
        return self.generic_visit(node)


def _typed(code, dtype, rename=None):
    """Device source of a scalar expression or statement (see _DeviceExpr)."""
    tree = _DeviceExpr(dtype, rename).visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def _device_shape(shape):
    return tuple(shape) if shape else (1,)


def _tuple_src(items):
    items = [str(i) for i in items]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _product(dims):
    return " * ".join(str(d) for d in dims) or "1"


def _index(buf, index):
    """Source of `buf[index]`; 0-d buffers are 1-element arrays on the device."""
    return f"{buf.name}[{', '.join(index) if buf.ndim else '0'}]"


def _array_type(buf):
    ndim = max(buf.ndim, 1)
    return f"{buf.dtype}[{', '.join([':'] * (ndim - 1) + ['::1'])}]"


class _Lines:
    def __init__(self, depth=0):
        self.lines = []
        self.depth = depth

    def emit(self, line):
        for part in line.splitlines():
            self.lines.append("    " * self.depth + part)

    def indent(self, n=1):
        self.depth += n

    def dedent(self, n=1):
        self.depth -= n


def _split_index(em, flat, names, sizes):
    """Emit code turning the row-major flat index `flat` into one variable per axis."""
    if not names:
        return
    if len(names) == 1:
        em.emit(f"{names[0]} = {flat}")
        return
    em.emit(f"rest = {flat}")
    for name, size in reversed(list(zip(names[1:], sizes[1:]))):
        em.emit(f"{name} = rest % {size}")
        em.emit(f"rest //= {size}")
    em.emit(f"{names[0]} = rest")


def _reduce_ops(kind, dtype):
    """(initial value, combine statement format) of a reduction; a max starts from the
    dtype's lowest value and keeps NaN, as NumPy's max does."""
    if kind == "sum":
        return f"numba.{dtype}(0)", "{a} = {a} + {b}"
    if np.dtype(dtype).kind == "f":
        return f"numba.{dtype}(-math.inf)", "{a} = {b} if {b} > {a} or {b} != {b} else {a}"
    return f"numba.{dtype}({np.iinfo(dtype).min})", "{a} = {b} if {b} > {a} else {a}"


def _warp_reduce(em, var, combine):
    """Emit a butterfly reduction of `var` over the warp (every lane gets the result):
    shfl.sync.bfly, called as the intrinsic (numba's `shfl_xor_sync` is a device
    function, which `cuda.compile_ptx` cannot compile without a GPU)."""
    off = WARP // 2
    while off:
        em.emit(f"{var}_sh = cuda.shfl_sync_intrinsic({FULL_MASK}, 3, {var}, {off}, 31)[0]")
        em.emit(combine.format(a=var, b=f"{var}_sh"))
        off //= 2


FIRST_THREAD = ("cuda.threadIdx.x == 0 and cuda.blockIdx.x == 0 and "
                "cuda.blockIdx.y == 0")


class _Kernel:
    """One kernel being generated: its parameters (buffers, then every dim) and body."""

    def __init__(self, gen, name):
        self.gen, self.name = gen, name
        self.buffers = {}
        self.body = _Lines(1)
        self.nvar = 0

    def buf(self, buffer):
        self.buffers.setdefault(buffer.name, buffer)
        return buffer.name

    def prefix(self):
        self.nvar += 1
        return f"s{self.nvar}_"

    def params(self):
        return list(self.buffers) + self.gen.dims


class _Generator:
    def __init__(self, program, block, tile, thread_tile):
        self.program = program
        self.block = block
        self.tile = tile
        self.thread_tile = thread_tile
        self.dims = list(program.dims)
        self.kernels = []       # source lines of each kernel
        self.signatures = {}    # kernel name -> numba signature string
        self.host = _Lines(1)   # body of program()
        self.temps = {}         # name -> Buffer allocated by allocate()
        self.plan = None

    # -- the module ------------------------------------------------------------------------
    def module(self):
        p = self.program
        host = self.host
        self.plan = fusion.plan(p)
        for dim, (index, axis) in p.dims.items():
            host.emit(f"{dim} = {p.inputs[index].name}.shape[{axis}]")
        for view in self.plan.views:
            host.emit(f"{view.out.name} = {view.src.name}.reshape("
                      f"{_tuple_src(_device_shape(view.out.shape))})  # {view.comment}")
        for n, launch in enumerate(self.plan.launches):
            self.launch(n, launch)
        self.emit_updates_and_return(host)
        args = [b.name for b in p.inputs + p.states + p.consts]
        temps = list(self.temps)
        threads = (self.tile // self.thread_tile) ** 2
        out = [f"# Generated by graphnn ({GENERATOR_VERSION}, numba {numba.__version__}), "
               f"block={self.block}, tile={self.tile}, thread_tile={self.thread_tile}. "
               "Do not edit: regenerated from the graph.",
               "import math", "",
               "import numba", "import numpy as np", "from numba import cuda",
               "from math import erf, exp, log, log1p, sqrt, tanh",
               "from numba import uint64", "",
               f"BLOCK = {self.block}", f"TILE = {self.tile}",
               f"MATMUL_THREADS = {threads}", f"MAX_BLOCKS = {MAX_BLOCKS}",
               f"LAUNCHES = {len(self.plan.launches)}  # kernel launches per call",
               "", "", "def blocks(n):",
               "    return max(1, min(MAX_BLOCKS, (n + BLOCK - 1) // BLOCK))", ""]
        for lines in self.kernels:
            out += ["", *lines, ""]
        out += ["", f"def allocate({', '.join(self.dims)}):",
                '    """Device temporaries for one binding of the dim names."""',
                "    return ("]
        out += [f"        cuda.device_array({_tuple_src(_device_shape(b.shape))}, "
                f"np.{b.dtype}),  # {b.name}" for b in self.temps.values()]
        out += ["    )", ""]
        out += ["", f"def program({', '.join(args + ['temps'])}):",
                '    """Run every step on the device; returns the output device arrays."""']
        if temps:
            out.append(f"    {', '.join(temps)}{',' if len(temps) == 1 else ''} = temps")
        out += host.lines
        out += ["", "", "SIGNATURES = {"]
        out += [f"    {name!r}: {sig!r}," for name, sig in self.signatures.items()]
        out += ["}"]
        return "\n".join(out) + "\n"

    def emit_updates_and_return(self, em):
        p = self.program
        updated = {s.name for s, _ in p.updates}

        def holds_state(buf):
            base = buf.base or buf
            return buf.role == "state" or base.role == "state" and base.name in updated

        # outputs and new values that alias a state are copied before any state is written
        results = []
        if p.updates:
            em.emit("# parameter updates: every new value is ready before any is written")
        snaps = {}
        for buf in p.outputs + [v for _, v in p.updates]:
            if p.updates and holds_state(buf) and buf.name not in snaps:
                snaps[buf.name] = f"{buf.name}_before_update"
                em.emit(f"{snaps[buf.name]} = cuda.device_array_like({buf.name})")
                em.emit(f"{snaps[buf.name]}.copy_to_device({buf.name})")
        for state, value in p.updates:
            em.emit(f"{state.name}.copy_to_device({snaps.get(value.name, value.name)})")
        for buf in p.outputs:
            results.append(snaps.get(buf.name, buf.name))
        em.emit(f"return {_tuple_src(results)}")

    # -- launches --------------------------------------------------------------------------
    def use(self, buf):
        """Mark a step's output as a device temporary made by allocate()."""
        if buf.role == "temp":
            self.temps.setdefault(buf.name, buf)

    def launch(self, n, launch):
        steps = launch.steps
        for step in steps + launch.side:
            self.use(step.out)
        for step in steps:
            for line in step.comment.splitlines() if step.comment else []:
                self.host.emit(f"# {line}")
        for step in launch.side:
            self.host.emit(f"# {step.comment}  (run by the first thread of the next kernel)")
        if launch.kind == "scalars":
            kind = "scalar"
        elif launch.kind == "rows":
            kind = "rows"
        else:
            kind = type(steps[0]).__name__.lower()
        k = _Kernel(self, f"k{n}_{kind}")
        if launch.side:
            self.side_tasks(k, launch.side)
        if launch.kind == "scalars":
            config = "1, WARP"
        elif launch.kind == "rows":
            config = self.rows(k, launch)
        elif isinstance(steps[0], ir.Matmul):
            config = self.matmul(k, steps)
        elif isinstance(steps[0], ir.BatchMatmul):
            config = self.batch_matmul(k, steps[0])
        elif isinstance(steps[0], ir.Reduce):
            config = self.reduce(k, steps)
        elif isinstance(steps[0], ir.ArgmaxMask):
            config = self.argmax_mask(k, steps[0])
        else:
            config = self.pointwise(k, steps)
        params = k.params()
        self.kernels.append([f"@cuda.jit(cache=True)", f"def {k.name}({', '.join(params)}):"]
                            + k.body.lines)
        types = [_array_type(b) for b in k.buffers.values()] + ["int64"] * len(self.dims)
        self.signatures[k.name] = f"void({', '.join(types)})"
        self.host.emit(f"{k.name}[{config}]({', '.join(params)})".replace("WARP", str(WARP)))

    def store(self, step):
        return self.plan.stores[id(step)]

    # -- scalar expressions ----------------------------------------------------------------
    def expr(self, k, em, expr, dtype, loop, subst=None, acc=None):
        """Emit the statements of `expr` with its loop variables i0, i1, ... bound to the
        source in `loop`, its variables renamed apart, loads replaced by `subst(load)`
        when that gives a variable; returns the source of its result."""
        p = k.prefix()
        rename = {f"i{a}": v for a, v in enumerate(loop)}
        if acc is not None:
            rename["acc"] = acc
        for var in expr.loads:
            rename[var] = p + var
        for var, _ in expr.stmts:
            rename[var] = p + var
        for var, load in expr.loads.items():
            value = subst(load) if subst else None
            if value is None:
                index = [_typed(i, dtype, rename) for i in load.index]
                value = _index(load.buffer, index)
                k.buf(load.buffer)
            em.emit(f"{p}{var} = {value}")
        for var, code in expr.stmts:
            prelude, code = _inline_calls(code, f"{p}{var}_")
            for statement in prelude:
                for line in _typed(statement, dtype, rename).splitlines():
                    em.emit(line)
            em.emit(f"{p}{var} = {_typed(code, dtype, rename)}")
        return _typed(expr.result, dtype, rename)

    def side_tasks(self, k, side):
        """Scalar steps run by the first thread (nothing else in the kernel touches what
        they read or write)."""
        em = k.body
        em.emit(f"if {FIRST_THREAD}:")
        em.indent()
        for step in side:
            zero = ["0"] * step.out.ndim
            value = self.expr(k, em, step.expr, step.out.dtype, zero)
            em.emit(f"{_index(step.out, zero)} = {value}")
            k.buf(step.out)
        em.dedent()

    def tails(self, k, em, anchor, tails, flat, point_vars, values):
        """Emit the chain's tail steps at the anchor's point: `point_vars` index the
        anchor's output, `flat` is the source of the point's flat index, `values`
        maps memory name -> register holding its value at this point."""
        for step in tails:
            if tuple(step.out.shape) == tuple(anchor.out.shape):
                loop = list(point_vars)
            else:
                loop = [f"{k.prefix()}j{a}" for a in range(step.out.ndim)]
                _split_index(em, flat, loop, [f"{k.buf(step.out)}.shape[{a}]"
                                              for a in range(step.out.ndim)])

            def subst(load, step=step):
                m = fusion.mem(load.buffer)
                if m in values and fusion.is_identity(load, step.out):
                    return values[m]
                return None
            value = self.expr(k, em, step.expr, step.out.dtype, loop, subst)
            var = f"{k.prefix()}r"
            em.emit(f"{var} = {value}")
            values[fusion.mem(step.out)] = var
            if self.store(step):
                em.emit(f"{k.buf(step.out)}[{', '.join(loop) or '0'}] = {var}")

    # -- pointwise anchors: elementwise, window, place -------------------------------------
    def pointwise(self, k, steps):
        anchor = steps[0]
        out = anchor.out
        k.buf(out)
        em = k.body
        em.emit(f"for e in range(cuda.grid(1), {out.name}.size, cuda.gridsize(1)):")
        em.indent()
        point = [f"p{a}" for a in range(out.ndim)]
        _split_index(em, "e", point, [f"{out.name}.shape[{a}]" for a in range(out.ndim)])
        if isinstance(anchor, ir.Elementwise):
            value = self.expr(k, em, anchor.expr, out.dtype, point)
        elif isinstance(anchor, ir.Window):
            value = self.window_value(k, em, anchor, point)
        else:
            value = self.place_value(k, em, anchor, point)
        em.emit(f"r0 = {value}")
        if self.store(anchor):
            em.emit(f"{_index(out, point)} = r0")
        self.tails(k, em, anchor, steps[1:], "e", point, {fusion.mem(out): "r0"})
        return f"blocks({out.name}.size), BLOCK"

    def window_value(self, k, em, step, point):
        """The element function of kernels/cuda_windows.py, inlined (its parameter names
        bound to the kernel's arguments, its index to the point), its value returned."""
        func = ast.parse(textwrap.dedent(inspect.getsource(ELEMENT_HELPERS[step.helper]))).body[0]
        names = [a.arg for a in func.args.args]
        body = func.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        *statements, result = body
        assert isinstance(result, ast.Return), step.helper
        p = k.prefix()
        rename = {}
        for name, buf in zip(names, step.args):
            rename[name] = k.buf(buf)
        for name, value in zip(names[len(step.args):], step.params):
            rename[name] = str(int(value))    # strides, pads, sizes: compile-time constants
        for name, var in zip(names[-4:], point):
            rename[name] = var
        local = {n.id for s in statements for n in ast.walk(s)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for name in local:
            rename[name] = p + name
        for statement in statements:
            em.emit(_typed(ast.unparse(statement), step.out.dtype, rename))
        return _typed(ast.unparse(result.value), step.out.dtype, rename)

    def place_value(self, k, em, step, point):
        """out = the part that covers this element (or zero where none does)."""
        out = step.out
        em.emit(f"pv = numba.{out.dtype}(0)")
        first = True
        for src, axis, start in step.parts:
            name = k.buf(src)
            inside = [f"{start} <= {point[axis]} < {start} + {name}.shape[{axis}]"]
            inside += [f"{point[a]} < {name}.shape[{a}]" for a in range(src.ndim) if a != axis]
            index = list(point[:src.ndim])
            index[axis] = f"{point[axis]} - {start}"
            em.emit(f"{'if' if first else 'elif'} {' and '.join(inside)}:")
            em.emit(f"    pv = {_index(src, index)}")
            first = False
        return "pv"  # without zero_fill the parts cover every element

    # -- reductions --------------------------------------------------------------------------
    def reduce(self, k, steps):
        step = steps[0]
        out, domain = step.out, step.domain
        kept = [a for a in range(len(domain)) if a not in step.axes]
        dtype = out.dtype
        init, combine = _reduce_ops(step.kind, dtype)
        warps = self.block // WARP
        em = k.body
        em.emit(f"cache = cuda.shared.array({warps}, numba.{dtype})")
        em.emit("tid = cuda.threadIdx.x")
        em.emit(f"lane = tid % {WARP}")
        em.emit(f"warp = tid // {WARP}")
        nout = _product([domain[a] for a in kept])
        em.emit(f"for o in range(cuda.blockIdx.x, {nout}, cuda.gridDim.x):")
        em.indent()
        kept_vars = [f"i{a}" for a in kept]
        _split_index(em, "o", kept_vars, [domain[a] for a in kept])
        em.emit(f"acc = {init}")
        em.emit(f"for q in range(tid, {_product([domain[a] for a in step.axes])}, "
                f"{self.block}):")
        em.indent()
        _split_index(em, "q", [f"i{a}" for a in step.axes], [domain[a] for a in step.axes])
        loop = [f"i{a}" for a in range(len(domain))]
        value = self.expr(k, em, step.expr, dtype, loop)
        em.emit(combine.format(a="acc", b=value))
        em.dedent()
        self.block_reduce(em, "acc", init, combine, warps)
        em.emit("if tid == 0:")
        em.indent()
        if step.post is not None:
            # post's loop variables are the domain's kept axes, named as in the domain
            result = self.expr(k, em, step.post, dtype, [f"i{a}" for a in range(len(domain))],
                               acc="acc")
            em.emit(f"acc = {result}")
        if self.store(step):
            k.buf(out)
            em.emit(f"{_index(out, kept_vars)} = acc")
        self.tails(k, em, step, steps[1:], "o", kept_vars, {fusion.mem(out): "acc"})
        em.dedent()
        em.emit("cuda.syncthreads()  # cache is reused by this block's next output element")
        em.dedent()
        return f"max(1, min(MAX_BLOCKS, {nout})), BLOCK"

    def block_reduce(self, em, var, init, combine, warps, cache="cache"):
        """Warp shuffles, then the warps' results through shared memory `cache`, then a
        shuffle again: every thread calls the same shuffles (block-uniform)."""
        _warp_reduce(em, var, combine)
        if warps == 1:
            return
        em.emit("if lane == 0:")
        em.emit(f"    {cache}[warp] = {var}")
        em.emit("cuda.syncthreads()")
        em.emit(f"{var} = {cache}[lane] if lane < {warps} else {init}")
        _warp_reduce(em, var, combine)

    # -- row kernels -----------------------------------------------------------------------
    def rows(self, k, launch):
        rows = launch.rows
        warps = self.block // WARP
        em = k.body
        em.emit("tid = cuda.threadIdx.x")
        em.emit(f"lane = tid % {WARP}")
        em.emit(f"warp = tid // {WARP}")
        totals = [s for s in launch.steps if fusion.row_kind(s, rows) == "total"]
        for t, step in enumerate(totals):
            init, _ = _reduce_ops(step.kind, step.out.dtype)
            em.emit(f"cache{t} = cuda.shared.array({warps}, numba.{step.out.dtype})")
            em.emit(f"tot{t} = {init}")
        # per-row values (row reductions, per-row elementwise) stay in registers
        row_vars = {}
        for step in launch.steps:
            if fusion.row_kind(step, rows) in ("row", "rowreduce"):
                row_vars[fusion.mem(step.out)] = f"{k.prefix()}row"
                em.emit(f"{row_vars[fusion.mem(step.out)]} = numba.{step.out.dtype}(0)")
        em.emit(f"for base in range(cuda.blockIdx.x * {warps}, {rows}, "
                f"cuda.gridDim.x * {warps}):")
        em.indent()
        em.emit("row = base + warp")
        em.emit(f"active = row < {rows}")

        def subst(load):
            m = fusion.mem(load.buffer)
            return row_vars.get(m) if m in row_vars and fusion._row_local(load, rows) else None

        for step in launch.steps:
            kind = fusion.row_kind(step, rows)
            dtype = step.out.dtype
            if kind == "cols":
                em.emit("if active:")
                em.emit(f"    for col in range(lane, {step.out.shape[1]}, {WARP}):")
                em.indent(2)
                value = self.expr(k, em, step.expr, dtype, ["row", "col"], subst)
                em.emit(f"{k.buf(step.out)}[row, col] = {value}")
                em.dedent(2)
                em.emit(f"cuda.syncwarp({FULL_MASK})")
            elif kind == "row":
                var = row_vars[fusion.mem(step.out)]
                em.emit("if active:")
                em.indent()
                loop = ["row"] + ["0"] * (step.out.ndim - 1)
                em.emit(f"{var} = {self.expr(k, em, step.expr, dtype, loop, subst)}")
                if self.store(step):
                    k.buf(step.out)
                    em.emit("if lane == 0:")
                    em.emit(f"    {_index(step.out, loop)} = {var}")
                em.dedent()
                em.emit(f"cuda.syncwarp({FULL_MASK})")
            elif kind == "rowreduce":
                var = row_vars[fusion.mem(step.out)]
                init, combine = _reduce_ops(step.kind, dtype)
                acc = f"{k.prefix()}acc"
                em.emit(f"{acc} = {init}")
                em.emit("if active:")
                em.emit(f"    for col in range(lane, {step.domain[1]}, {WARP}):")
                em.indent(2)
                value = self.expr(k, em, step.expr, dtype, ["row", "col"], subst)
                em.emit(combine.format(a=acc, b=value))
                em.dedent(2)
                _warp_reduce(em, acc, combine)
                em.emit("if active:")
                em.indent()
                if step.post is not None:
                    value = self.expr(k, em, step.post, dtype, ["row"], subst, acc=acc)
                    em.emit(f"{acc} = {value}")
                em.emit(f"{var} = {acc}")
                if self.store(step):
                    k.buf(step.out)
                    em.emit("if lane == 0:")
                    em.emit(f"    {_index(step.out, ['row'])} = {acc}")
                em.dedent()
                em.emit(f"cuda.syncwarp({FULL_MASK})")
            else:  # a whole reduction: this thread's part of the total
                t = totals.index(step)
                _, combine = _reduce_ops(step.kind, dtype)
                em.emit("if active:")
                em.indent()
                if len(step.domain) == 2:
                    em.emit(f"for col in range(lane, {step.domain[1]}, {WARP}):")
                    loop = ["row", "col"]
                else:
                    em.emit("for col in range(lane, 1, 1):  # lane 0 holds the row's value")
                    loop = ["row"]
                em.indent()
                value = self.expr(k, em, step.expr, dtype, loop, subst)
                em.emit(combine.format(a=f"tot{t}", b=value))
                em.dedent(2)
                em.emit(f"cuda.syncwarp({FULL_MASK})")
        em.dedent()
        for t, step in enumerate(totals):
            init, combine = _reduce_ops(step.kind, step.out.dtype)
            self.block_reduce(em, f"tot{t}", init, combine, warps, cache=f"cache{t}")
            em.emit("if tid == 0:")
            em.indent()
            if step.post is not None:
                value = self.expr(k, em, step.post, step.out.dtype,
                                  [f"i{a}" for a in range(len(step.domain))], acc=f"tot{t}")
                em.emit(f"tot{t} = {value}")
            k.buf(step.out)
            em.emit(f"{_index(step.out, [])} = tot{t}")
            em.dedent()
            if warps > 1:
                em.emit(f"cuda.syncthreads()")
        if totals:
            return "1, BLOCK"  # the totals are finished in one block
        return f"max(1, min(MAX_BLOCKS, ({rows} + {warps - 1}) // {warps})), BLOCK"

    # -- matmul ----------------------------------------------------------------------------
    def matmul(self, k, steps):
        step = steps[0]
        out, a, b = step.out, step.a, step.b
        tm = tn = self.tile
        r = self.thread_tile
        tx_n, ty_n = tn // r, tm // r
        threads = tx_n * ty_n
        dtype = out.dtype
        zero = f"numba.{dtype}(0)"
        an, bn, on = k.buf(a), k.buf(b), k.buf(out)
        em = k.body
        em.emit(f"sa = cuda.shared.array(({BK}, {tm + 1}), numba.{dtype})")
        em.emit(f"sb = cuda.shared.array(({BK}, {tn + 1}), numba.{dtype})")
        em.emit("tid = cuda.threadIdx.x")
        em.emit(f"tx = tid % {tx_n}")
        em.emit(f"ty = tid // {tx_n}")
        em.emit(f"row0 = cuda.blockIdx.y * {tm}")
        em.emit(f"col0 = cuda.blockIdx.x * {tn}")
        em.emit(f"m = {on}.shape[0]")
        em.emit(f"n = {on}.shape[1]")
        em.emit(f"inner = {an}.shape[{0 if step.trans_a else 1}]")
        for i in range(r):
            em.emit("; ".join(f"c{i}_{j} = {zero}" for j in range(r)))
        em.emit(f"for k0 in range(0, inner, {BK}):")
        em.indent()
        # A's tile, sa[kk, rr] = op(A)[row0 + rr, k0 + kk]; consecutive threads read
        # consecutive addresses of A in either layout
        em.emit(f"for l in range(tid, {BK * tm}, {threads}):")
        em.indent()
        if step.trans_a:   # A is stored (inner, m): rows of op(A) are contiguous
            em.emit(f"rr = l % {tm}")
            em.emit(f"kk = l // {tm}")
            src = f"{an}[k0 + kk, row0 + rr]"
        else:
            em.emit(f"kk = l % {BK}")
            em.emit(f"rr = l // {BK}")
            src = f"{an}[row0 + rr, k0 + kk]"
        em.emit(f"sa[kk, rr] = {src} if row0 + rr < m and k0 + kk < inner else {zero}")
        em.dedent()
        em.emit(f"for l in range(tid, {BK * tn}, {threads}):")
        em.indent()
        if step.trans_b:   # B is stored (n, inner)
            em.emit(f"kk = l % {BK}")
            em.emit(f"cc = l // {BK}")
            src = f"{bn}[col0 + cc, k0 + kk]"
        else:
            em.emit(f"cc = l % {tn}")
            em.emit(f"kk = l // {tn}")
            src = f"{bn}[k0 + kk, col0 + cc]"
        em.emit(f"sb[kk, cc] = {src} if col0 + cc < n and k0 + kk < inner else {zero}")
        em.dedent()
        em.emit("cuda.syncthreads()")
        em.emit(f"for kk in range({BK}):")
        em.indent()
        # thread (ty, tx) owns rows ty + i*TY and columns tx + j*TX: a warp reads
        # consecutive shared addresses (no bank conflicts) and stores coalesced
        em.emit("; ".join(f"a{i} = sa[kk, ty + {i * ty_n}]" for i in range(r)))
        em.emit("; ".join(f"b{j} = sb[kk, tx + {j * tx_n}]" for j in range(r)))
        for i in range(r):
            for j in range(r):
                em.emit(f"c{i}_{j} += a{i} * b{j}")
        em.dedent()
        em.emit("cuda.syncthreads()")
        em.dedent()
        value_of = (lambda c: c) if step.alpha == 1 else \
            (lambda c: f"numba.{dtype}({float(step.alpha)!r}) * {c}")
        old = f"{on}[row, col]"
        beta = "" if step.beta == 0 else f" + {old}" if step.beta == 1 else \
            f" + numba.{dtype}({float(step.beta)!r}) * {old}"
        if len(steps) == 1:
            # the epilogue, from the registers
            for i in range(r):
                for j in range(r):
                    em.emit(f"row = row0 + ty + {i * ty_n}")
                    em.emit(f"col = col0 + tx + {j * tx_n}")
                    em.emit("if row < m and col < n:")
                    em.emit(f"    {on}[row, col] = {value_of(f'c{i}_{j}')}{beta}")
        else:
            # a chain's tail is emitted once, not per register: the tile goes through
            # shared memory, then each thread finishes elements of it (coalesced)
            em.emit(f"ct = cuda.shared.array(({tm}, {tn}), numba.{dtype})")
            for i in range(r):
                em.emit("; ".join(f"ct[ty + {i * ty_n}, tx + {j * tx_n}] = c{i}_{j}"
                                  for j in range(r)))
            em.emit("cuda.syncthreads()")
            em.emit(f"for e in range(tid, {tm * tn}, {threads}):")
            em.indent()
            em.emit(f"row = row0 + e // {tn}")
            em.emit(f"col = col0 + e % {tn}")
            em.emit("if row < m and col < n:")
            em.indent()
            em.emit(f"acc = {value_of(f'ct[e // {tn}, e % {tn}]')}{beta}")
            if self.store(step):
                em.emit(f"{on}[row, col] = acc")
            self.tails(k, em, step, steps[1:], "row * n + col", ["row", "col"],
                       {fusion.mem(out): "acc"})
            em.dedent(2)
        grid = (f"(({on}.shape[1] + {tn - 1}) // {tn}, ({on}.shape[0] + {tm - 1}) // {tm})")
        return f"{grid}, MATMUL_THREADS"

    # -- argmax masks ----------------------------------------------------------------------
    def batch_matmul(self, k, step):
        """A stack of matrix products (ir.BatchMatmul), one BATCH_TILE x BATCH_TILE output
        tile per block through shared memory: grid axis z walks out's batch indices; each
        block adds up the products of the summed positions (where out's dim is 1 and the
        full size is not) before it stores."""
        out, a, b = step.out, step.a, step.b
        for buf in (out, a, b):
            k.buf(buf)
        t, dtype, rank = BATCH_TILE, out.dtype, out.ndim - 2
        ia = [f"ia{d}" for d in range(rank)]
        ib = [f"ib{d}" for d in range(rank)]
        io = [f"io{d}" for d in range(rank)]
        a_at = (lambda r, c: f"{a.name}[{', '.join(ia + [c, r])}]") if step.trans_a else \
            (lambda r, c: f"{a.name}[{', '.join(ia + [r, c])}]")
        b_at = (lambda r, c: f"{b.name}[{', '.join(ib + [c, r])}]") if step.trans_b else \
            (lambda r, c: f"{b.name}[{', '.join(ib + [r, c])}]")
        inner = f"{a.name}.shape[{rank + (0 if step.trans_a else 1)}]"
        em = k.body
        em.emit(f"ta = cuda.shared.array(({t}, {t}), numba.{dtype})")
        em.emit(f"tb = cuda.shared.array(({t}, {t}), numba.{dtype})")
        em.emit("tx = cuda.threadIdx.x")
        em.emit("ty = cuda.threadIdx.y")
        em.emit(f"row = cuda.blockIdx.y * {t} + ty")
        em.emit(f"col = cuda.blockIdx.x * {t} + tx")
        em.emit(f"m, n, inner = {out.name}.shape[{rank}], {out.name}.shape[{rank + 1}], "
                f"{inner}")
        for d in range(rank):  # the full size of each batch axis, and how many are summed
            em.emit(f"full{d} = {a.name}.shape[{d}] if {a.name}.shape[{d}] > "
                    f"{b.name}.shape[{d}] else {b.name}.shape[{d}]")
            em.emit(f"summed{d} = full{d} if {out.name}.shape[{d}] == 1 else 1")
        count = _product([f"{out.name}.shape[{d}]" for d in range(rank)])
        em.emit(f"for z in range(cuda.blockIdx.z, {count}, cuda.gridDim.z):")
        em.indent()
        _split_index(em, "z", io, [f"{out.name}.shape[{d}]" for d in range(rank)])
        em.emit(f"acc = numba.{dtype}(0)")
        em.emit(f"for s in range({_product([f'summed{d}' for d in range(rank)])}):")
        em.indent()
        _split_index(em, "s", [f"is{d}" for d in range(rank)],
                     [f"summed{d}" for d in range(rank)])
        for d in range(rank):
            em.emit(f"i{d} = is{d} if {out.name}.shape[{d}] == 1 else io{d}")
            em.emit(f"ia{d} = i{d} if {a.name}.shape[{d}] != 1 else 0")
            em.emit(f"ib{d} = i{d} if {b.name}.shape[{d}] != 1 else 0")
        em.emit(f"for start in range(0, inner, {t}):")
        em.indent()
        for line in [
                "if row < m and start + tx < inner:",
                f"    ta[ty, tx] = {a_at('row', 'start + tx')}",
                "else:",
                f"    ta[ty, tx] = numba.{dtype}(0)",
                "if col < n and start + ty < inner:",
                f"    tb[ty, tx] = {b_at('start + ty', 'col')}",
                "else:",
                f"    tb[ty, tx] = numba.{dtype}(0)",
                "cuda.syncthreads()",
                f"for j in range({t}):",
                "    acc += ta[ty, j] * tb[j, tx]",
                "cuda.syncthreads()"]:
            em.emit(line)
        em.dedent(2)
        em.emit("if row < m and col < n:")
        em.emit(f"    {out.name}[{', '.join(io + ['row', 'col'])}] = acc")
        em.dedent()
        return (f"((({out.name}.shape[{rank + 1}] + {t - 1}) // {t}), "
                f"(({out.name}.shape[{rank}] + {t - 1}) // {t}), "
                f"max(1, min(65535, {count}))), ({t}, {t})")

    def argmax_mask(self, k, step):
        out, src = step.out, step.src
        k.buf(out)
        k.buf(src)
        em = k.body
        if out.ndim == 0:
            em.emit("if cuda.grid(1) == 0:")
            em.emit(f"    {out.name}[0] = 1")
            return "1, BLOCK"
        kept = [a for a in range(src.ndim) if a not in step.axes]
        shape = [f"{src.name}.shape[{a}]" for a in range(src.ndim)]
        em.emit(f"for e in range(cuda.grid(1), {_product([shape[a] for a in kept])}, "
                f"cuda.gridsize(1)):")
        em.indent()
        _split_index(em, "e", [f"i{a}" for a in kept], [shape[a] for a in kept])
        for a in step.axes:
            em.emit(f"i{a} = 0")
        em.emit(f"best = {_index(src, [f'i{a}' for a in range(src.ndim)])}")
        em.emit("best_q = 0")
        em.emit(f"for q in range({_product([shape[a] for a in step.axes])}):")
        em.indent()
        _split_index(em, "q", [f"i{a}" for a in step.axes], [shape[a] for a in step.axes])
        em.emit(f"v = {_index(src, [f'i{a}' for a in range(src.ndim)])}")
        em.emit("if v > best or v != v and best == best:  # the first NaN wins")
        em.emit("    best = v")
        em.emit("    best_q = q")
        em.emit(f"{_index(out, [f'i{a}' for a in range(src.ndim)])} = 0")
        em.dedent()
        _split_index(em, "best_q", [f"i{a}" for a in step.axes],
                     [shape[a] for a in step.axes])
        em.emit(f"{_index(out, [f'i{a}' for a in range(src.ndim)])} = 1")
        em.dedent()
        return f"blocks({src.name}.size), BLOCK"

