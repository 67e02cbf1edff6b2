"""GPU back end: a kernel-IR `Program` becomes ONE generated Python module holding a
`numba.cuda` kernel per step and two host functions:

- `allocate(d0, d1, ...)` makes the device temporaries for one binding of the dim names;
- `program(inputs..., states..., consts..., temps)` launches every step in order (forward,
  backward, parameter updates written in place into the state buffers) and returns the
  output device arrays. Nothing is copied between host and device in there.

Kernel schemes, chosen to be simple and correct:
- elementwise: a grid-stride loop over the flat output index, split into one index per axis;
- reduce: one thread block per output element; each thread folds a strided part of the
  reduced domain, then a tree reduction in shared memory (BLOCK must be a power of two);
- matmul: TILE x TILE tiles of both operands in shared memory, transposes read in place;
- conv/pool windows: one thread per output element, the body inlined from
  kernels/cuda_windows.py (no device functions, so compile_ptx needs no GPU);
- argmax mask: one thread per kept element, scanning the reduced axes;
- reshape: a view of the device array; place (concat/pad): a copy kernel per part.

0-d buffers live on the device as 1-element arrays. Floating constants are typed
(`numba.float32(...)`), so float32 graphs hold no float64 arithmetic. `SIGNATURES` in the
module gives each kernel's argument types, for `cuda.compile_ptx` without a GPU.
"""
import ast
import inspect
import textwrap

import numba
import numpy as np

from . import ir, random
from .cuda_windows import ELEMENT_HELPERS

GENERATOR_VERSION = "cuda-2"
MAX_BLOCKS = 1024          # grid-stride loops need no more blocks than this


def generate(program, block=128, tile=16):
    """The module source for `program`; `block` threads per 1-D block, `tile` for matmul."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"block size must be a power of two, got {block}")
    gen = _Generator(program, block, tile)
    return gen.module()


class _DeviceExpr(ast.NodeTransformer):
    """Scalar-expression source -> device source: `T(...)` becomes `numba.<dtype>(...)`,
    np.inf/np.nan become math.inf/math.nan, and two-argument max/min become conditional
    expressions with Python's semantics (the built-in CUDA target compiles builtin max/min
    through a path that needs a device, so `cuda.compile_ptx` could not check them)."""

    def __init__(self, dtype):
        self.dtype = dtype

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

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == "np" and \
                node.attr in ("inf", "nan"):
            return ast.Attribute(ast.Name("math", ast.Load()), node.attr, ast.Load())
        return self.generic_visit(node)


def _typed(code, dtype):
    """Device source of a scalar expression or statement (see _DeviceExpr)."""
    tree = _DeviceExpr(dtype).visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


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


def _device_shape(shape):
    return tuple(shape) if shape else (1,)


def _tuple_src(items):
    items = [str(i) for i in items]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _scaled(step, out, dtype):
    """acc scaled by the step's alpha, plus beta times what out holds (BLAS gemm's form)."""
    value = "acc" if step.alpha == 1 else f"numba.{dtype}({float(step.alpha)!r}) * acc"
    if step.beta != 0:
        old = f"{out.name}[row, col]"
        value += f" + {old}" if step.beta == 1 else \
            f" + numba.{dtype}({float(step.beta)!r}) * {old}"
    return value


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
        self.lines.append("    " * self.depth + line)

    def indent(self, n=1):
        self.depth += n

    def dedent(self, n=1):
        self.depth -= n


def _split_index(em, flat, names, sizes):
    """Emit code turning the row-major flat index `flat` into one variable per axis."""
    if not names:
        return
    em.emit(f"rest = {flat}")
    for name, size in reversed(list(zip(names[1:], sizes[1:]))):
        em.emit(f"{name} = rest % {size}")
        em.emit(f"rest //= {size}")
    em.emit(f"{names[0]} = rest")


class _Generator:
    def __init__(self, program, block, tile):
        self.program = program
        self.block = block
        self.tile = tile
        self.dims = list(program.dims)
        self.kernels = []       # source lines of each kernel
        self.signatures = {}    # kernel name -> numba signature string
        self.host = _Lines(1)   # body of program()
        self.temps = {}         # name -> Buffer allocated by allocate()

    # -- the module ------------------------------------------------------------------------
    def module(self):
        p = self.program
        host = self.host
        for dim, (index, axis) in p.dims.items():
            host.emit(f"{dim} = {p.inputs[index].name}.shape[{axis}]")
        for k, step in enumerate(p.steps):
            for line in step.comment.splitlines() if step.comment else []:
                host.emit(f"# {line}")
            self.step(k, step)
        self.emit_updates_and_return(host)
        args = [b.name for b in p.inputs + p.states + p.consts]
        temps = list(self.temps)
        out = [f"# Generated by graphnn ({GENERATOR_VERSION}, numba {numba.__version__}), "
               f"block={self.block}, tile={self.tile}. Do not edit: regenerated from the graph.",
               "import math", "",
               "import numba", "import numpy as np", "from numba import cuda",
               "from math import erf, exp, log, log1p, sqrt, tanh",
               "from numba import uint64", "",
               f"BLOCK = {self.block}", f"TILE = {self.tile}", f"MAX_BLOCKS = {MAX_BLOCKS}",
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

    # -- steps -----------------------------------------------------------------------------
    def use(self, buf):
        """Mark a step's output as a device temporary made by allocate()."""
        if buf.role == "temp":
            self.temps.setdefault(buf.name, buf)

    def add_kernel(self, name, params, lines):
        self.kernels.append([f"@cuda.jit", f"def {name}({', '.join(params)}):"] +
                            ["    " + line for line in lines])

    def signature(self, name, buffers, scalars):
        types = [_array_type(b) for b in buffers] + ["int64"] * scalars
        self.signatures[name] = f"void({', '.join(types)})"

    def step(self, k, step):
        kind = type(step).__name__.lower()
        name = f"k{k}_{kind}"
        if isinstance(step, ir.Reshape):
            self.host.emit(f"{step.out.name} = {step.src.name}.reshape("
                           f"{_tuple_src(_device_shape(step.out.shape))})")
            return
        self.use(step.out)
        emit = {ir.Elementwise: self.elementwise, ir.Reduce: self.reduce,
                ir.Matmul: self.matmul, ir.BatchMatmul: self.batch_matmul,
                ir.Window: self.window,
                ir.ArgmaxMask: self.argmax_mask, ir.Place: self.place}
        if type(step) not in emit:
            raise TypeError(f"unknown kernel step {type(step).__name__}")
        emit[type(step)](name, step)

    def expr_buffers(self, out, expr):
        bufs = {out.name: out}
        for load in expr.loads.values():
            bufs.setdefault(load.buffer.name, load.buffer)
        return list(bufs.values())

    def emit_expr(self, em, expr, dtype):
        for var, load in expr.loads.items():
            em.emit(f"{var} = {_index(load.buffer, load.index)}")
        for var, code in expr.stmts:
            prelude, code = _inline_calls(code, f"{var}_")
            for statement in prelude:
                for line in _typed(statement, dtype).splitlines():
                    em.emit(line)
            em.emit(f"{var} = {_typed(code, dtype)}")

    def elementwise(self, name, step):
        out = step.out
        bufs = self.expr_buffers(out, step.expr)
        params = [b.name for b in bufs] + self.dims
        em = _Lines(1)
        loopvars = [f"i{k}" for k in range(out.ndim)]
        _split_index(em, "k", loopvars, [f"{out.name}.shape[{a}]" for a in range(out.ndim)])
        self.emit_expr(em, step.expr, out.dtype)
        em.emit(f"{_index(out, loopvars)} = {_typed(step.expr.result, out.dtype)}")
        self.add_kernel(name, params, [
            f"for k in range(cuda.grid(1), {out.name}.size, cuda.gridsize(1)):"] + em.lines)
        self.signature(name, bufs, len(self.dims))
        size = _product(_device_shape(out.shape))
        self.host.emit(f"{name}[blocks({size}), BLOCK]({', '.join(params)})")

    def reduce(self, name, step):
        out, domain = step.out, step.domain
        kept = [k for k in range(len(domain)) if k not in step.axes]
        bufs = self.expr_buffers(out, step.expr)
        if step.post is not None:
            names = {b.name for b in bufs}
            bufs += [b for b in self.expr_buffers(out, step.post) if b.name not in names]
        params = [b.name for b in bufs] + self.dims
        dtype = out.dtype
        # a max starts from the dtype's lowest value and keeps NaN, as NumPy's max does
        if step.kind == "sum":
            init, combine = f"numba.{dtype}(0)", "{a} = {a} + {b}"
        elif np.dtype(dtype).kind == "f":
            init = f"numba.{dtype}(-math.inf)"
            combine = "{a} = {b} if {b} > {a} or {b} != {b} else {a}"
        else:
            init = f"numba.{dtype}({np.iinfo(dtype).min})"
            combine = "{a} = {b} if {b} > {a} else {a}"
        em = _Lines(0)
        em.emit(f"cache = cuda.shared.array({self.block}, numba.{dtype})")
        em.emit("tid = cuda.threadIdx.x")
        em.emit(f"for o in range(cuda.blockIdx.x, {_product([domain[k] for k in kept])}, "
                f"cuda.gridDim.x):")
        em.indent()
        _split_index(em, "o", [f"i{k}" for k in kept], [domain[k] for k in kept])
        em.emit(f"acc = {init}")
        em.emit(f"for q in range(tid, {_product([domain[k] for k in step.axes])}, "
                f"{self.block}):")
        em.indent()
        _split_index(em, "q", [f"i{k}" for k in step.axes], [domain[k] for k in step.axes])
        self.emit_expr(em, step.expr, dtype)
        em.emit(combine.format(a="acc", b=_typed(step.expr.result, dtype)))
        em.dedent()
        em.emit("cache[tid] = acc")
        em.emit("cuda.syncthreads()")
        em.emit(f"half = {self.block // 2}")
        em.emit("while half > 0:")
        em.indent()
        em.emit("if tid < half:")
        em.emit("    " + combine.format(a="cache[tid]", b="cache[tid + half]"))
        em.emit("cuda.syncthreads()")
        em.emit("half //= 2")
        em.dedent()
        em.emit("if tid == 0:")
        em.indent()
        em.emit("acc = cache[0]")
        if step.post is not None:
            self.emit_expr(em, step.post, dtype)
        result = "acc" if step.post is None else _typed(step.post.result, dtype)
        em.emit(f"{_index(out, [f'i{k}' for k in kept])} = {result}")
        em.dedent()
        em.emit("cuda.syncthreads()  # cache is reused by this block's next output element")
        self.add_kernel(name, params, em.lines)
        self.signature(name, bufs, len(self.dims))
        nout = _product([domain[k] for k in kept])
        self.host.emit(f"{name}[max(1, min(MAX_BLOCKS, {nout})), BLOCK]({', '.join(params)})")

    def matmul(self, name, step):
        out, a, b = step.out, step.a, step.b
        t = self.tile
        dtype = out.dtype
        a_at = (lambda r, c: f"{a.name}[{c}, {r}]") if step.trans_a else \
            (lambda r, c: f"{a.name}[{r}, {c}]")
        b_at = (lambda r, c: f"{b.name}[{c}, {r}]") if step.trans_b else \
            (lambda r, c: f"{b.name}[{r}, {c}]")
        inner = f"{a.name}.shape[{0 if step.trans_a else 1}]"
        lines = [
            f"ta = cuda.shared.array(({t}, {t}), numba.{dtype})",
            f"tb = cuda.shared.array(({t}, {t}), numba.{dtype})",
            "tx = cuda.threadIdx.x",
            "ty = cuda.threadIdx.y",
            f"row = cuda.blockIdx.y * {t} + ty",
            f"col = cuda.blockIdx.x * {t} + tx",
            f"m, n, inner = {out.name}.shape[0], {out.name}.shape[1], {inner}",
            f"acc = numba.{dtype}(0)",
            f"for start in range(0, inner, {t}):",
            f"    if row < m and start + tx < inner:",
            f"        ta[ty, tx] = {a_at('row', 'start + tx')}",
            "    else:",
            f"        ta[ty, tx] = numba.{dtype}(0)",
            f"    if col < n and start + ty < inner:",
            f"        tb[ty, tx] = {b_at('start + ty', 'col')}",
            "    else:",
            f"        tb[ty, tx] = numba.{dtype}(0)",
            "    cuda.syncthreads()",
            f"    for j in range({t}):",
            "        acc += ta[ty, j] * tb[j, tx]",
            "    cuda.syncthreads()",
            "if row < m and col < n:",
            f"    {out.name}[row, col] = {_scaled(step, out, dtype)}",
        ]
        bufs = list({x.name: x for x in (out, a, b)}.values())
        params = [x.name for x in bufs]
        self.add_kernel(name, params, lines)
        self.signature(name, bufs, 0)
        grid = (f"((({out.name}.shape[1] + TILE - 1) // TILE), "
                f"(({out.name}.shape[0] + TILE - 1) // TILE))")
        self.host.emit(f"{name}[{grid}, (TILE, TILE)]({', '.join(params)})")

    def batch_matmul(self, name, step):
        """The tiled matmul of each matrix of the stack: grid axis z walks out's batch
        indices; each block adds up the products of the summed positions (where out's dim
        is 1 and the full size is not) before it stores (see ir.BatchMatmul)."""
        out, a, b = step.out, step.a, step.b
        t, dtype, rank = self.tile, out.dtype, out.ndim - 2
        ia = [f"ia{d}" for d in range(rank)]
        ib = [f"ib{d}" for d in range(rank)]
        io = [f"io{d}" for d in range(rank)]
        a_at = (lambda r, c: f"{a.name}[{', '.join(ia + [c, r])}]") if step.trans_a else \
            (lambda r, c: f"{a.name}[{', '.join(ia + [r, c])}]")
        b_at = (lambda r, c: f"{b.name}[{', '.join(ib + [c, r])}]") if step.trans_b else \
            (lambda r, c: f"{b.name}[{', '.join(ib + [r, c])}]")
        inner = f"{a.name}.shape[{rank + (0 if step.trans_a else 1)}]"
        em = _Lines(0)
        em.emit(f"ta = cuda.shared.array(({t}, {t}), numba.{dtype})")
        em.emit(f"tb = cuda.shared.array(({t}, {t}), numba.{dtype})")
        em.emit("tx = cuda.threadIdx.x")
        em.emit("ty = cuda.threadIdx.y")
        em.emit(f"row = cuda.blockIdx.y * {t} + ty")
        em.emit(f"col = cuda.blockIdx.x * {t} + tx")
        em.emit(f"m, n, inner = {out.name}.shape[{rank}], {out.name}.shape[{rank + 1}], {inner}")
        for d in range(rank):  # the full size of each batch axis, and how many are summed
            em.emit(f"full{d} = {a.name}.shape[{d}] if {a.name}.shape[{d}] > "
                    f"{b.name}.shape[{d}] else {b.name}.shape[{d}]")
            em.emit(f"summed{d} = full{d} if {out.name}.shape[{d}] == 1 else 1")
        em.emit(f"for z in range(cuda.blockIdx.z, "
                f"{_product([f'{out.name}.shape[{d}]' for d in range(rank)])}, "
                "cuda.gridDim.z):")
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
                f"if row < m and start + tx < inner:",
                f"    ta[ty, tx] = {a_at('row', 'start + tx')}",
                "else:",
                f"    ta[ty, tx] = numba.{dtype}(0)",
                f"if col < n and start + ty < inner:",
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
        bufs = list({x.name: x for x in (out, a, b)}.values())
        params = [x.name for x in bufs]
        self.add_kernel(name, params, em.lines)
        self.signature(name, bufs, 0)
        count = _product([f"{out.name}.shape[{d}]" for d in range(rank)])
        grid = (f"((({out.name}.shape[{rank + 1}] + TILE - 1) // TILE), "
                f"(({out.name}.shape[{rank}] + TILE - 1) // TILE), "
                f"max(1, min(65535, {count})))")
        self.host.emit(f"{name}[{grid}, (TILE, TILE)]({', '.join(params)})")

    def window(self, name, step):
        """One thread per output element; the body is the element function of
        kernels/cuda_windows.py, inlined (parameter names kept), its `return` a store."""
        out = step.out
        func = ast.parse(textwrap.dedent(inspect.getsource(ELEMENT_HELPERS[step.helper]))).body[0]
        names = [a.arg for a in func.args.args]
        body = func.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        *statements, result = body
        assert isinstance(result, ast.Return), step.helper
        index = names[-4:]
        params = names[:-4] + [out.name]
        em = _Lines(1)
        _split_index(em, "e", index, [f"{out.name}.shape[{a}]" for a in range(4)])
        for statement in statements:
            for line in _typed(ast.unparse(statement), out.dtype).splitlines():
                em.emit(line)
        em.emit(f"{out.name}[{', '.join(index)}] = {_typed(ast.unparse(result.value), out.dtype)}")
        self.add_kernel(name, params, [
            f"for e in range(cuda.grid(1), {out.name}.size, cuda.gridsize(1)):"] + em.lines)
        types = [_array_type(b) for b in step.args] + ["int64"] * len(step.params)
        self.signatures[name] = f"void({', '.join(types + [_array_type(out)])})"
        launch = [b.name for b in step.args] + [str(p) for p in step.params] + [out.name]
        self.host.emit(f"{name}[blocks({out.name}.size), BLOCK]({', '.join(launch)})")

    def argmax_mask(self, name, step):
        out, src = step.out, step.src
        if out.ndim == 0:
            lines = ["if cuda.grid(1) == 0:", f"    {out.name}[0] = 1"]
        else:
            kept = [k for k in range(src.ndim) if k not in step.axes]
            shape = [f"{src.name}.shape[{k}]" for k in range(src.ndim)]
            em = _Lines(1)
            _split_index(em, "k", [f"i{k}" for k in kept], [shape[k] for k in kept])
            for k in step.axes:
                em.emit(f"i{k} = 0")
            em.emit(f"best = {_index(src, [f'i{k}' for k in range(src.ndim)])}")
            em.emit("best_q = 0")
            em.emit(f"for q in range({_product([shape[k] for k in step.axes])}):")
            em.indent()
            _split_index(em, "q", [f"i{k}" for k in step.axes], [shape[k] for k in step.axes])
            em.emit(f"v = {_index(src, [f'i{k}' for k in range(src.ndim)])}")
            em.emit("if v > best or v != v and best == best:  # the first NaN wins")
            em.emit("    best = v")
            em.emit("    best_q = q")
            em.emit(f"{_index(out, [f'i{k}' for k in range(src.ndim)])} = 0")
            em.dedent()
            _split_index(em, "best_q", [f"i{k}" for k in step.axes],
                         [shape[k] for k in step.axes])
            em.emit(f"{_index(out, [f'i{k}' for k in range(src.ndim)])} = 1")
            lines = [f"for k in range(cuda.grid(1), {_product([shape[k] for k in kept])}, "
                     f"cuda.gridsize(1)):"] + em.lines
        self.add_kernel(name, [out.name, src.name], lines)
        self.signature(name, [out, src], 0)
        self.host.emit(f"{name}[blocks({src.name}.size), BLOCK]({out.name}, {src.name})")

    def place(self, name, step):
        out = step.out
        if step.zero_fill:
            fill = f"{name}_zero"
            self.add_kernel(fill, ["flat"], [
                "for k in range(cuda.grid(1), flat.size, cuda.gridsize(1)):",
                "    flat[k] = 0"])
            self.signatures[fill] = f"void({out.dtype}[::1])"
            self.host.emit(f"{fill}[blocks({out.name}.size), BLOCK]"
                           f"({out.name}.reshape({out.name}.size))")
        for part, (src, axis, start) in enumerate(step.parts):
            kernel = f"{name}_part{part}"
            em = _Lines(1)
            index = [f"i{a}" for a in range(src.ndim)]
            _split_index(em, "k", index, [f"{src.name}.shape[{a}]" for a in range(src.ndim)])
            target = list(index)
            target[axis] = f"{index[axis]} + {start}"
            em.emit(f"{_index(out, target)} = {_index(src, index)}")
            self.add_kernel(kernel, [out.name, src.name], [
                f"for k in range(cuda.grid(1), {src.name}.size, cuda.gridsize(1)):"] + em.lines)
            self.signature(kernel, [out, src], 0)
            self.host.emit(f"{kernel}[blocks({src.name}.size), BLOCK]({out.name}, {src.name})")
