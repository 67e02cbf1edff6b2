"""CPU back end: a kernel-IR `Program` becomes ONE generated Python module whose `program`
function, compiled with `numba.njit(cache=True)`, runs every step (forward, backward and
parameter updates) in a single call from Python.

kernels/loader.py writes the module to the on-disk kernel cache and imports it. Helpers
(convolution and pooling loops) are copied into the module, so a cached module never
depends on another file that could change.

Calling convention: `program(*inputs, *states, *consts, *recycled, workspace)` returns
the outputs. Temporaries of 32 KiB and more live in `workspace`, a uint8 array the caller
keeps between calls, of `workspace_bytes(*inputs)` bytes (when it is smaller, `program`
raises WORKSPACE_TOO_SMALL before any step), so large steps allocate nothing but their
outputs (a fresh allocation of megabytes costs a page fault per 4 KiB touched).
`recycled` holds one array per output listed in the module's RECYCLED: an earlier result
of that output that nobody holds any more, written again when its shape fits (else a
zero-size array, and a new array is made). `run(module, *arrays)` calls a program as a test would.
"""
import bisect
import collections
import functools
import inspect
import itertools
import math
import re
import textwrap

import numba
import numpy as np

from . import blas, ir, loader
from .approx import APPROXIMATIONS, WIDE_VECTORS_ATTRIBUTE, WIDE_VECTORS_IMPORTS, wide_vectors
from . import grouped, packed, random, windows
from .windows import GEMM_HELPERS, GEMM_SUPPORT, col_block_rows, is_pointwise, \
    use_winograd, winograd_block_tiles, winograd_scratch_items, winograd_side, winograd_tiles

# the window helpers a generated module may copy: convolutions, pooling (windows.py) and
# depthwise and grouped convolutions (grouped.py)
HELPERS = {**windows.HELPERS, **grouped.HELPERS}

GENERATOR_VERSION = "cpu-23"
# What `program` raises, before any step, when the input arrays' shapes are not its own.
SHAPE_MISMATCH = "graphnn: input shapes differ from the compiled program's"
# ... and when an integer input holds a value outside its index range (program.index_checks).
INDEX_OUT_OF_RANGE = "graphnn: an index input holds a value outside its range"
# ... and when the workspace it is given is smaller than `workspace_bytes(*inputs)`.
WORKSPACE_TOO_SMALL = "graphnn: the workspace is too small for these inputs"
INLINE_SITES = 8  # see generate()
WORKSPACE_ALIGN = 64  # bytes: each temporary in the workspace starts on a cache line
WORKSPACE_MIN = 32768  # bytes: smaller temporaries are allocated at each call
# the bytes a temporary of `size` bytes takes in the workspace (source)
_ROUNDED = f"({{size}} + {WORKSPACE_ALIGN - 1}) // {WORKSPACE_ALIGN} * {WORKSPACE_ALIGN}"
SHARED_STEPS = 2  # see _program_functions()
# fastmath without nnan/ninf: NaN and Inf keep their meaning (see docs/ARCHITECTURE.md)
# No 'nsz': with 'reassoc' it lets LLVM factor a loop-invariant operand out of a sum of
# products (sum_j x*y[j] -> x*sum_j y[j]), so inf*0 never happens and NaN becomes inf.
# 'reassoc' alone vectorises the reductions (measured: no loop got slower without 'nsz').
FASTMATH = "{'arcp', 'contract', 'afn', 'reassoc'}"
_T_CALL = re.compile(r"\bT\(")
# a call of the float32 exp, tanh or erf (kernels/approx.py) in a generated line
_APPROXIMATION_CALL = re.compile(rf"\b(?:{'|'.join(APPROXIMATIONS)})\(")


def _shape_src(shape):
    parts = [str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _number_literal(value):
    """A float as source text (finite values only reach here: they come from constants)."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"matmul scale {value!r} must be finite")
    return repr(value)


def _dtype_src(dtype):
    return f"np.{dtype}"


class _Emitter:
    """Lines of one function body, or of one step of it (`for_step`), at an indentation
    depth; `setup` holds a step's allocations and flat views, which stay in `program`."""

    def __init__(self):
        self.lines = []
        self.setup = []
        self.depth = 1
        # buffers whose flat view `<name>_f` exists in the function body
        self.flat = set()
        # reshape results: name -> the buffer whose memory they view (never itself a view)
        self.views = {}
        # where temporaries and outputs get their memory (see _Memory)
        self.memory = _Memory({})
        # the bytes convolutions share for patch-matrix blocks (see _conv_scratch)
        self.scratch = None

    def for_step(self):
        """An emitter for one step's lines, sharing this one's flat views, views and
        memory plan."""
        em = _Emitter.__new__(_Emitter)  # (one per step of a deep graph: no __init__)
        em.lines, em.setup, em.depth = [], [], 1
        em.flat, em.views, em.memory = self.flat, self.views, self.memory
        em.scratch = self.scratch
        return em

    def flat_views(self, buffers):
        """Define `<name>_f`, a 1-D view of each buffer (the buffer itself when it is 1-D),
        unless the function body already has it: a buffer's memory never changes within a
        call, and Numba compiles each reshape anew, so one per buffer keeps compile time
        down. A reshape result's flat view is that of the buffer it views."""
        for name, buf in sorted({b.name: b for b in buffers}.items()):
            if name in self.flat:
                continue
            root = self.views.get(name, buf)
            if root.ndim == 1:
                view = root.name
            elif root.name in self.flat:
                view = f"{root.name}_f"
            else:
                view = f"{root.name}.reshape(-1)"
            self.emit_setup(f"{name}_f = {view}")
            if self.depth == 1:
                self.flat.add(name)

    def reshape(self, out, src, needed):
        """Bind `out` to a view of `src` with out's shape. A reshape of a reshape views the
        first one's buffer directly, with no reshape when its shape is that buffer's; a view
        that no later step reads is not made (Numba compiles each reshape, ~25 ms)."""
        root = self.views.get(src.name, src)
        self.views[out.name] = root
        if out.name not in needed:
            self.emit(f"# ({out.name} is not read: later steps view {root.name} directly)")
        elif tuple(out.shape) == tuple(root.shape):
            self.emit(f"{out.name} = {root.name}")
        else:
            self.emit(f"{out.name} = {root.name}.reshape({_shape_src(out.shape)})")

    def emit(self, line):
        self.lines.append("    " * self.depth + line)

    def emit_setup(self, line):
        self.setup.append("    " * self.depth + line)

    def indent(self):
        self.depth += 1

    def dedent(self, n=1):
        self.depth -= n


def _typed(expr, dtype):
    return _T_CALL.sub(f"np.{dtype}(", expr)


def _float32_only(program):
    buffers = program.inputs + program.states + program.consts + [s.out for s in program.steps]
    return all(b.dtype == "float32" or not b.dtype.startswith("float") for b in buffers)


def generate(program, parallel=False, approximate=True):
    """The module source for `program`. With `approximate` (the default), float32
    programs use the vectorisable exp, tanh and erf of kernels/approx.py."""
    out = [f"# Generated by graphnn ({GENERATOR_VERSION}, numba {numba.__version__}). "
           "Do not edit: regenerated from the graph.",
           "import numpy as np",
           "from math import erf, exp, log, log1p, sqrt, tanh",
           "from numba import njit, prange", ""]
    deco = (f"@njit(cache=True, error_model='numpy', fastmath={FASTMATH}, "
            f"parallel={bool(parallel)})")
    # shared step functions are only called from `program`: no Python or C entry points
    shared = deco.replace("@njit(", "@njit(no_cpython_wrapper=True, no_cfunc_wrapper=True, ")
    body = _program_functions(program, parallel, deco, shared)
    helpers_used = sorted({s.helper for s in program.steps if isinstance(s, ir.Window)} |
                          _conv_code_used(program))
    matmul = any(isinstance(s, (ir.Matmul, ir.BatchMatmul)) for s in program.steps)
    batched = any(isinstance(s, ir.BatchMatmul) for s in program.steps)
    vector = any(uses_gemv(s) for s in program.steps)
    if any(isinstance(s, ir.HostCall) for s in program.steps):
        raise ValueError("a program with Python steps (gn.repeat) runs in library mode only")
    approximate = approximate and _float32_only(program)
    out = _with_support(out, body, helpers_used, matmul, approximate, batched, vector)
    out += _approximated(body) if approximate else body
    return "\n".join(out) + "\n"


def _with_support(out, body, helpers_used, matmul, approximate, batched=False,
                  vector=False):
    """`out` (a module's first lines: comment and imports) followed by what `body` calls:
    the float32 exp, tanh and erf (when `approximate`), the window helpers named, gemm (when
    `matmul`), batch_gemm (when `batched`), gemv (when `vector`). The generated `program`
    and each library kernel are built the same way."""
    # (no C entry point: these are called from compiled code or from Python, never from C;
    # leaving it out saves compile time)
    plain = f"@njit(cache=True, no_cfunc_wrapper=True, error_model='numpy', fastmath={FASTMATH})"
    out = list(out)
    # convolutions run as BLAS products (kernels/windows.py, *_gemm)
    gemm_used = [h for h in helpers_used if h in GEMM_HELPERS]
    epilogues = EPILOGUES_USED in helpers_used
    winograd_f4 = WINOGRAD_F4_USED in helpers_used
    training_modes = TRAINING_MODES_USED in helpers_used
    winograd_u = WINOGRAD_U_USED in helpers_used
    helpers_used = [h for h in helpers_used if h not in GEMM_HELPERS and h not in (
        EPILOGUES_USED, WINOGRAD_F4_USED, TRAINING_MODES_USED, WINOGRAD_U_USED)]
    if approximate:
        # Numba inlines a helper at each call site (so the loop can vectorise) at a compile
        # cost of about 0.2 s per site: inline only where the sites are few.
        sites = sum(len(_APPROXIMATION_CALL.findall(line))
                    for line in body if not line.lstrip().startswith("#"))
        inline = plain.replace("@njit(", "@njit(inline='always', ") \
            if sites <= INLINE_SITES else plain
        out.append("# vectorisable float32 exp, tanh and erf (kernels/approx.py) replace libm's")
        for fn in APPROXIMATIONS.values():
            out += ["", inline, inspect.getsource(fn).rstrip(), ""]
        if sites:  # 512-bit vectors for the loops that call them (kernels/approx.py)
            out[3:3] = WIDE_VECTORS_IMPORTS
            out += ["", f"WIDE_VECTORS_ATTRIBUTE = {WIDE_VECTORS_ATTRIBUTE!r}", "",
                    inspect.getsource(wide_vectors).rstrip(), ""]
    for name in helpers_used:
        out += ["", plain, inspect.getsource(HELPERS[name]).rstrip(), ""]
    if any("random_bits(" in line for line in body if not line.lstrip().startswith("#")):
        out += ["", "# counter-based random bits, Philox-4x32-10 (kernels/random.py)",
                "uint64 = np.uint64", "", plain.replace("@njit(", "@njit(inline='always', "),
                inspect.getsource(random.random_bits).rstrip(), ""]
    if gemm_used:
        out += ["", "# convolutions as BLAS products: patch-matrix blocks (im2col) and gemm "
                "(kernels/windows.py)"]
        # (the blocks of the parts the module does not use are left out of the source
        # itself: Numba would still type and lower them, 0.1-0.3 s of compile time)
        left_out = [flag for flag, used in (("WINOGRAD_F4", winograd_f4),
                                            ("WINOGRAD_U", winograd_u)) if not used]
        for fn in GEMM_SUPPORT:
            out += ["", plain, _without_blocks(inspect.getsource(fn).rstrip(), left_out), ""]
        # conv_gemm's modes 5 and 6 (graphnn's tile kernel) only where used: Numba then
        # leaves their code out of the others (1-1.5 s less compile time)
        uses_packed = any(h in windows.PACKED_HELPERS for h in gemm_used)
        out += ["", "# graphnn's own gemm tile kernel for packed constant kernels "
                "(kernels/packed.py)", f"PACKED = {uses_packed}",
                f"PACK_VECTOR_BYTES = {packed.PACK_VECTOR_BYTES}",
                f"PACK_DEPTH = {packed.PACK_DEPTH}", f"PACK_PREFETCH = {packed.PACK_PREFETCH}",
                f"PACK_UNROLL = {packed.PACK_UNROLL}", f"EPILOGUES = {epilogues}",
                f"WINOGRAD_F4 = {winograd_f4}", f"TRAINING_MODES = {training_modes}",
                f"WINOGRAD_U = {winograd_u}",
                f"DIRECT_MIN_WIDTH = {windows.DIRECT_MIN_WIDTH}",
                f"EPILOGUE_ROWS = {windows.EPILOGUE_ROWS}", "",
                inspect.getsource(packed._packed_tile).rstrip(), ""]
    if matmul or gemm_used or any(h in grouped.BLAS_HELPERS for h in helpers_used):
        bits = blas.integer_bits()
        if bits is None:
            blas.register()  # raises BlasNotFound, which says what to install
        out[3:3] = blas.IMPORTS
        out += ["", "# matrix products: gemm with alpha and beta in the CBLAS numpy links "
                "(kernels/blas.py)", f"_CBLAS_BITS = {bits}",
                f"CBLAS_SYMBOL = {blas.CBLAS_SYMBOL!r}",
                "_register_cblas(CBLAS_SYMBOL, _CBLAS_BITS)", "",
                inspect.getsource(blas._cblas_gemm).rstrip(), "", "",
                plain, inspect.getsource(blas.gemm).rstrip(), ""]
        if batched:
            out += ["", plain, inspect.getsource(blas.batch_gemm).rstrip(), ""]
        if vector:
            out += ["", inspect.getsource(blas._cblas_gemv).rstrip(), "", "",
                    plain, inspect.getsource(blas.gemv).rstrip(), ""]
    return out


def _program_functions(program, parallel, deco, shared):
    """The lines of the `program` function, after those of its shared step functions.

    Numba compiles each loop nest it is given, and compile time grows with their number
    (about 0.05-0.1 s per nest); recurrent networks repeat the same step for every time
    step. So steps whose code is the same but for the buffers (and dims) they touch run one
    function, `<kind>_<n>`, called once per step with those buffers, when at least
    SHARED_STEPS of them do; the others are written out in `program`. Allocations and flat
    views stay in `program` (see _Emitter.setup)."""
    args, recycled, em = _program_start(program)
    for index, bound in program.index_checks:
        name = program.inputs[index].name
        em.emit(f"for v in {name}.reshape(-1):")
        em.emit(f"    if v < 0 or v >= {int(bound)}:")
        em.emit(f"        raise ValueError({INDEX_OUT_OF_RANGE!r})")
    prologue_at = len(em.lines)
    allocated, loop, buffers, needed = _steps_context(program, args, em, parallel)
    emitted = []  # per step: its emitter, template (or None), parameters and arguments
    for step in program.steps:
        se = em.for_step()
        _emit_step(se, step, allocated, loop, needed)
        template, params, names = None, [], []
        if isinstance(step, _SHAREABLE):
            template, params, names = _template(se.lines, buffers, program.dims)
        emitted.append((se, template, params, names))
    uses = {}
    for number, (_, template, _, _) in enumerate(emitted):
        if template is not None:
            uses.setdefault(template, []).append(number)
    functions, out = {}, []
    for template, numbers in uses.items():
        if len(numbers) < SHARED_STEPS:
            continue
        kind = type(program.steps[numbers[0]]).__name__.lower()
        count = sum(f.startswith(kind + "_") for f in functions.values())
        name = functions[template] = f"{kind}_{count}"
        params = emitted[numbers[0]][2]
        out += ["", shared, f"def {name}({', '.join(params)}):",
                f"    # steps {', '.join(map(str, numbers))}"] + template.splitlines()
    for number, (step, (se, template, _, names)) in enumerate(zip(program.steps, emitted)):
        em.emit(f"# step {number}: {type(step).__name__.lower()}")
        for line in step.comment.splitlines():
            em.emit(f"# {line}")
        em.lines += se.setup
        if template in functions:
            em.emit(f"{functions[template]}({', '.join(names)})")
        else:
            em.lines += se.lines
    _emit_epilogue(em, program, prologue_at, _emit_state_copy)
    args += [f"recycled{k}" for k in recycled] + ["workspace"]
    module = ["", "# outputs whose earlier results the caller may pass back (see kernels/cpu.py)",
              f"RECYCLED = {tuple(recycled)!r}", "", ""] + _memory_functions(program, em,
                                                                          recycled)
    return out + module + ["", deco, f"def program({', '.join(args)}):"] + em.lines


def _program_start(program):
    """(the program's arguments before the recycled outputs and the workspace, the recycled
    outputs, an emitter holding its first lines): the symbolic dims read from the inputs,
    then, as the caller may skip its shape checks, a raise before any step runs when a
    feed's shape differs from the program's (the caller then finds what is wrong)."""
    args = ([b.name for b in program.inputs] + [b.name for b in program.states]
            + [b.name for b in program.consts])
    recycled = recycled_outputs(program)
    em = _Emitter()
    em.memory = _Memory({program.outputs[k].name: f"recycled{k}" for k in recycled},
                        lifetimes(program))
    for dim, (index, axis) in program.dims.items():
        em.emit(f"{dim} = {program.inputs[index].name}.shape[{axis}]")
    mismatch = _shape_mismatch(program)
    if mismatch:
        em.emit(f"if {' or '.join(mismatch)}:")
        em.emit(f"    raise ValueError({SHAPE_MISMATCH!r})")
    return args, recycled, em


def _steps_context(program, args, em, parallel):
    """What emitting the steps needs: the names allocated so far (the arguments), the loop
    (prange with `parallel`), every buffer's name, and the buffers read by a step other than
    a reshape (see _Emitter.reshape) or returned. Gives `em` the convolutions' scratch."""
    em.scratch = _conv_scratch(program.steps)
    buffers = set(args) | {s.out.name for s in program.steps}
    needed = {b.name for s in program.steps if not isinstance(s, ir.Reshape)
              for b in ir.step_reads(s)}
    needed |= {b.name for b in program.outputs} | {v.name for _, v in program.updates}
    return set(args), "prange" if parallel else "range", buffers, needed


def _emit_epilogue(em, program, prologue_at, copy_state):
    """The end of `program`: outputs that share memory with an input, state or constant are
    copied (they hold the values from before the updates); new values are all computed from
    the old ones, so a value that shares memory with a state (e.g. {a: b, b: a}) is copied
    before any state is overwritten, then `copy_state(em, state, value, source)` writes each;
    the memory prologue goes in at `prologue_at`; the outputs are returned."""
    results = []
    for k, b in enumerate(program.outputs):
        if b.role in ("input", "state", "const", "view"):
            em.emit(f"out{k} = {b.name}.copy()")
            results.append(f"out{k}")
        else:
            results.append(b.name)
    sources = []
    for k, (state, value) in enumerate(program.updates):
        if value.role != "temp":
            em.emit(f"new{k} = {value.name}.copy()")
            sources.append(f"new{k}")
        else:
            sources.append(value.name)
    for (state, value), source in zip(program.updates, sources):
        copy_state(em, state, value, source)
    em.lines[prologue_at:prologue_at] = em.memory.prologue()
    em.emit("return (" + ", ".join(results) + ("," if len(results) == 1 else "") + ")")


def _memory_functions(program, em, recycled):
    """The lines of `recycle_nothing()` (a zero-size array per recycled output) and
    `workspace_bytes(*inputs)`, which every generated program module defines."""
    inputs = [b.name for b in program.inputs]
    nothing = [f"np.empty({_shape_src((0,) * program.outputs[k].ndim)}, "
               f"{_dtype_src(program.outputs[k].dtype)})" for k in recycled]
    sizes = [f"{dim} = {program.inputs[index].name}.shape[{axis}]"
             for dim, (index, axis) in program.dims.items()] + em.memory.offsets()
    return ["def recycle_nothing():",
            "    return (" + "".join(f"{n}, " for n in nothing) + ")", "", "",
            f"def workspace_bytes({', '.join(inputs)}):",
            '    """The bytes of workspace `program` needs for these inputs."""'] + \
        ["    " + line for line in sizes] + ["    return _wend", ""]


# steps whose loops can run in a shared function (matmuls, windows and reshapes are a line)
_SHAREABLE = (ir.Elementwise, ir.Reduce, ir.ArgmaxMask, ir.Place)
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")
_SUBSCRIPT = re.compile(r"\[[^\[\]]*\]")
_INTEGER = re.compile(r"\b\d+\b")


def _template(lines, buffers, dims):
    """A step's lines with each buffer (or flat view) they name replaced by `buf<k>`, k
    numbering them in order of appearance, and the names they use from outside, in that
    order: (text, parameters, arguments). Dims keep their names (the same everywhere).
    Integers in subscripts (a slice's start, a broadcast's 0) become parameters `n<k>`
    too, so that the steps of a sequence share one function."""
    params, names = [], []

    def rename(match):
        name = match.group(0)
        is_buffer = name in buffers or (name.endswith("_f") and name[:-2] in buffers)
        if name not in dims and not is_buffer:
            return name
        if name not in names:
            names.append(name)
            params.append(f"buf{sum(p.startswith('buf') for p in params)}" if is_buffer
                          else name)
        return params[names.index(name)]
    numbers = []

    def number(match):
        numbers.append(match.group(0))
        return f"n{len(numbers) - 1}"

    def subscript(match):
        return _INTEGER.sub(number, match.group(0))
    text = "\n".join(_SUBSCRIPT.sub(subscript, _NAME.sub(rename, line)) for line in lines)
    # np.intp(...): an int literal would make Numba compile the function once per value
    return (text, params + [f"n{k}" for k in range(len(numbers))],
            names + [f"np.intp({n})" for n in numbers])


SCRATCH = "conv_scratch"


def _winograd(step):
    """(tiles per gemm round, scratch items) when a convolution step runs as Winograd
    F(2x2, 3x3) (kernels/windows.py conv_gemm, mode CONV2D_WINOGRAD: a forward 3x3 stride-1
    convolution whose channels and output size are known when the code is generated, see
    use_winograd; or mode CONV2D_WINOGRAD_U, a `conv2d_winograd` step made by
    winograd_constants), else None."""
    pre = step.helper in ("conv2d_winograd", "conv2d_winograd_packed")
    if step.helper != "conv2d" and not pre:
        return None
    s, ph, pw = step.params
    kh, kw, ci, co = step.args[1].shape
    oh, ow = step.out.shape[1:3]
    if not pre and (not all(isinstance(d, int) for d in (kh, kw, ci, co, oh, ow)) or
                    not use_winograd(kh, kw, s, ci, co, oh, ow)):
        return None
    side = step.args[1].shape[0] - 2 if pre else 2  # (U is 6 x 6 for F(4x4, 3x3))
    taps = (side + 2) ** 2
    block = winograd_block_tiles(ci, co, _itemsize(step.out.dtype), taps)
    tiles = f"{step.out.shape[0]} * {winograd_tiles(oh, ow, side)}"
    fixed = winograd_scratch_items(ci, co, 0, pre, taps)
    per_tile = winograd_scratch_items(ci, co, 1, pre, taps) - fixed
    return block, f"{fixed} + min({tiles}, {block}) * {per_tile}"


def grad_inputs_as_winograd(program, step_nodes=None):
    """Rewrite each input gradient of a stride-1 3x3 convolution that pays as Winograd (see
    use_winograd, the channels swapped) as the forward convolution it is: of the output
    gradient, padded by 2 - the forward's padding, with the kernel turned by 180 degrees
    and its channel axes swapped (a new step computes that kernel from w, 3 x 3 x co x ci,
    then a conv2d step runs as Winograd F(2x2, 3x3) like the forward one). dx[y, x, c] =
    sum over i, j, k of g[y + i - 2 + ph, x + j - 2 + pw, k] w[2 - i, 2 - j, c, k]: the
    same sum as conv2d_grad_input's col2im(g @ w^T), in another order. (cnn-mnist's second
    convolution: its input gradient took 12.4 ms as im2col-free gemm + col2im against
    7.6 ms for its Winograd forward.) Returns the number of gradients rewritten."""
    steps, nodes, rewritten = [], [], 0
    made_by = step_nodes if step_nodes is not None else [None] * len(program.steps)
    for k, (step, made) in enumerate(zip(program.steps, made_by)):
        if isinstance(step, ir.Window) and step.helper == "conv2d_grad_input" and \
                step.params[0] == 1 and step.epilogue is None:
            g, w = step.args
            kh, kw, ci, co = w.shape
            h, wd = step.out.shape[1:3]
            if (kh, kw) == (3, 3) and all(isinstance(d, int) for d in (ci, co, h, wd)) and \
                    use_winograd(kh, kw, 1, co, ci, h, wd):
                _, ph, pw = step.params
                turned = ir.Buffer(f"{w.name}_turned{k}", (kh, kw, co, ci), w.dtype, "temp")
                load = ir.Load(w, (f"{kh - 1} - i0", f"{kw - 1} - i1", "i3", "i2"))
                steps.append(ir.Elementwise(turned, ir.ScalarExpr({"x0": load}, [], "x0"),
                                            comment=f"{w.name} turned for the input gradient"))
                steps.append(ir.Window(step.out, "conv2d", [g, turned],
                                       (1, kh - 1 - ph, kw - 1 - pw), step.comment +
                                       "\n(as a convolution of the output gradient)"))
                nodes += [made, made]
                rewritten += 1
                continue
        steps.append(step)
        nodes.append(made)
    if rewritten:
        program.steps[:] = steps
        if step_nodes is not None:
            step_nodes[:] = nodes
    return rewritten


def fold_conv_pads(program, step_nodes=None):
    """Drop the zero-padding copies in front of forward convolutions: a `pad_axis` step
    (Place, zeros then one part along the height or width) right before the conv2d step
    that reads its result, which nothing reads afterwards, is removed and the conv2d step
    reads the unpadded image with that much more top or left padding (conv_gemm reads
    the padding as zeros itself; what lies past the bottom or right edge is zero either
    way). An ONNX Conv with pads that are not "same" imports as such pads (ResNet-50's stem
    and strided 3x3 layers). Repeated, so a pad of both axes folds too. `step_nodes`, a
    list parallel to the steps (the graph nodes each computes), loses the pad's entry to
    the convolution's. Returns the number of pad steps removed."""
    steps = program.steps
    kept = {b.name for b in program.outputs} | {b.name for pair in program.updates
                                                 for b in pair}
    folded = 0
    j = 1
    while j < len(steps):
        conv, pad = steps[j], steps[j - 1]
        if not _foldable_pad(pad, conv, kept) or \
                not _dead_after(steps, j, pad.out.name):
            j += 1
            continue
        (src, axis, start), = pad.parts
        s, ph, pw = conv.params
        conv.params = (s, ph + start, pw) if axis == 1 else (s, ph, pw + start)
        conv.args = [src] + list(conv.args[1:])
        conv.comment = (conv.comment + "\n" if conv.comment else "") + \
            f"(reads {src.name}: the zero padding of {pad.out.name} folded in)"
        del steps[j - 1]
        if step_nodes is not None:
            step_nodes[j] = list(step_nodes[j]) + list(step_nodes[j - 1])
            del step_nodes[j - 1]
        folded += 1
        j = max(1, j - 1)
    return folded


def place_in_concat(program, step_nodes=None, training=False):
    """Write parts of concatenations in place: an elementwise step whose result is a part
    of a concat (a Place step without zero fill) and is read by nothing else (the bias and
    relu after each branch of a SqueezeNet fire module or an Inception block) stores its
    result straight into the concatenated buffer at the part's offset (`placed`, see
    ir.Elementwise), and so does a forward convolution along the channels (its epilogue's
    channels, see ir.Window: a DenseNet layer's new features); the Place step no longer
    copies that part, and a Place step left with no parts is removed (`step_nodes` as in
    fold_conv_pads). Only when nothing reads or
    writes the concatenated buffer (or a view of it) between the two steps, and neither
    buffer is an output, a state's new value or a view. Returns the parts placed."""
    steps = program.steps
    kept = {b.name for b in program.outputs} | {b.name for pair in program.updates
                                                 for b in pair}
    viewed = {b.base.name for s in steps for b in [s.out] + list(ir.step_reads(s))
              if b.base is not None}
    writer, placed = {}, 0
    j = 0
    while j < len(steps):
        step = steps[j]
        if isinstance(step, ir.Place) and not step.zero_fill:
            parts = []
            for part in step.parts:
                i = writer.get(part[0].name)
                if i is not None and _placeable(steps, i, j, part, step.out, kept, viewed,
                                                training):
                    producer = steps[i]
                    if isinstance(producer, ir.Window):  # a convolution: its channels
                        producer.epilogue = (None, 0, part[0].shape[3], part[2])
                    else:
                        producer.inplace_of = None
                        producer.placed = (tuple(part[0].shape), part[1], part[2])
                    producer.out = step.out
                    producer.comment += f"\n(stored in place in {step.out.name})"
                    placed += 1
                else:
                    parts.append(part)
            step.parts = parts
            if not parts:
                del steps[j]
                if step_nodes is not None:
                    step_nodes[j - 1] = list(step_nodes[j - 1]) + list(step_nodes[j])
                    del step_nodes[j]
                continue
        writer[step.out.name] = j
        j += 1
    return placed


def _placeable(steps, i, j, part, out, kept, viewed, training):
    src, axis, start = part
    producer = steps[i]
    if isinstance(producer, ir.Window):  # a forward convolution writing channels of out
        # (not in a training step: see fold_conv_epilogues)
        if producer.helper not in FORWARD_CONVOLUTIONS or producer.epilogue is not None or \
                training or \
                axis != 3 or src.dtype not in ("float32", "float64") or \
                not all(isinstance(d, int) and d > 0 for d in producer.args[1].shape):
            return False
    elif not isinstance(producer, ir.Elementwise) or producer.placed is not None:
        return False
    if producer.out.name != src.name or producer.out.dtype != out.dtype:
        return False
    names = (src.name, out.name)
    if any(b.role != "temp" or b.base is not None or b.name in kept or b.name in viewed
           for b in (src, out)) or src.name == out.name:
        return False
    if src.ndim != out.ndim or src.ndim == 0 or \
            not all(isinstance(d, int) for d in src.shape + out.shape) or \
            not isinstance(start, int) or start < 0 or \
            start + src.shape[axis] > out.shape[axis]:
        return False
    # the concatenated buffer is not touched between them, nor the part read
    if any(b.name == out.name for b in ir.step_reads(producer)):
        return False
    for step in steps[i + 1:j]:
        if step.out.name in names or any(b.name in names for b in ir.step_reads(step)):
            return False
    others = [p for p in steps[j].parts if p is not part]
    return all(p[0].name != src.name for p in others) and _dead_after(steps, j, src.name)


EPILOGUES_USED = "(epilogues)"  # in a module's helpers: its conv_gemm needs EPILOGUES
WINOGRAD_F4_USED = "(winograd f4)"  # ... needs WINOGRAD_F4
TRAINING_MODES_USED = "(training modes)"  # ... needs TRAINING_MODES
WINOGRAD_U_USED = "(winograd u)"  # ... needs WINOGRAD_U
# everything conv_code() may name (a library's conv_gemm module can be asked for more)
CONV_CODE = frozenset(GEMM_HELPERS) | {EPILOGUES_USED, WINOGRAD_F4_USED, TRAINING_MODES_USED,
                                       WINOGRAD_U_USED, "conv2d_direct"}


def _has_epilogues(program):
    return any(getattr(s, "epilogue", None) for s in program.steps)


_FLAG_BLOCK = re.compile(r"(\s*)if (\w+):\s*(?:#.*)?")


def _without_blocks(source, flags):
    """`source` without the blocks `if FLAG:` (the test alone on its line, no else) of the
    names `flags`, each a module constant that is False where the source goes."""
    out, skip = [], None  # skip: the indent of the block being left out
    for line in source.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip is not None:
            if not line.strip() or indent > skip:
                continue
            if line.lstrip().startswith(("else", "elif")):
                raise ValueError(f"{line.strip()!r} after a block of {flags}")
            skip = None
        m = _FLAG_BLOCK.fullmatch(line)
        if m and m.group(2) in flags:
            skip = indent
            continue
        out.append(line)
    return "\n".join(out)


def _conv_code_used(program):
    """The markers of the parts of conv_gemm that `program`'s convolutions need beyond its
    modes (see _with_support): epilogues, F(4x4, 3x3) Winograd, the gradients and the kernel
    transformed at each call (modes CONV2D_GRAD_INPUT, CONV2D_GRAD_FILTER,
    CONV2D_WINOGRAD), Winograd from a U transformed beforehand."""
    convolutions = [s for s in program.steps if isinstance(s, ir.Window)]
    return ({EPILOGUES_USED} if _has_epilogues(program) else set()) | (
        {WINOGRAD_F4_USED} if any(s.helper in ("conv2d_winograd", "conv2d_winograd_packed")
                                  and s.args[1].shape[0] == 6 for s in convolutions)
        else set()) | (
        {TRAINING_MODES_USED} if any(s.helper in ("conv2d_grad_input", "conv2d_grad_filter")
                                     or _winograd(s) and s.helper == "conv2d"
                                     for s in convolutions) else set()) | (
        {WINOGRAD_U_USED, "conv2d_direct"} if any(
            s.helper in ("conv2d_winograd", "conv2d_winograd_packed")
            for s in convolutions) else set())


FORWARD_CONVOLUTIONS = ("conv2d", "conv2d_packed", "conv2d_winograd",
                        "conv2d_winograd_packed")


def fold_conv_epilogues(program, step_nodes=None, training=False):
    """Finish convolutions as they are written: an elementwise step right after a forward
    convolution that reads its result element for element and adds a per-channel bias,
    applies relu or ReLU6 (clip(x, 0, 6)), or both (or only copies it into a
    concatenation, see place_in_concat)
    becomes the convolution's epilogue (ir.Window.epilogue, kernels/windows.py conv_gemm),
    and the convolution writes where that step wrote (in place, a concatenation's
    channels or another buffer); the step is removed (`step_nodes` as in fold_conv_pads).
    Only when the convolution's own result is read by nothing else, and not in a
    training step (`training`: the program updates parameters): a training step gains little from it (its convolutions'
    products dominate), and conv_gemm without epilogues compiles 0.3 s quicker
    (windows.EPILOGUES), which cnn-mnist's cold compile (<= 5 s) needs. Returns the steps
    folded."""
    steps = program.steps
    if training:
        return 0
    kept = {b.name for b in program.outputs} | {b.name for pair in program.updates
                                                 for b in pair}
    viewed = {b.base.name for s in steps for b in [s.out] + list(ir.step_reads(s))
              if b.base is not None}
    folded, j = 0, 1
    while j < len(steps):
        conv, step = steps[j - 1], steps[j]
        epilogue = _conv_epilogue(conv, step, kept, viewed) \
            if isinstance(step, ir.Elementwise) and isinstance(conv, ir.Window) else None
        if epilogue is None or not (step.out.name == conv.out.name or
                                    _dead_after(steps, j, conv.out.name)):
            j += 1
            continue
        conv.epilogue = epilogue
        conv.comment += "\n" + step.comment + \
            ("" if step.out.name == conv.out.name else f"\n(written to {step.out.name})")
        conv.out = step.out
        del steps[j]
        if step_nodes is not None:
            step_nodes[j - 1] = list(step_nodes[j - 1]) + list(step_nodes[j])
            del step_nodes[j]
        folded += 1
    return folded


_RELU = "T(0) if {0} <= T(0) else {0}"
# ReLU6 as torchvision's models export it, Clip(x, 0, 6): graphnn's clip(x, 0.0, 6.0) as
# graphnn/ops.py _CLIP_TEMPLATE writes it (tests/kernels/test_conv_epilogue.py folds it)
_CLIP_LOW = "({0} if {0} >= T(0.0) or {0} != {0} else T(0.0))"
_RELU6 = f"{_CLIP_LOW} if {_CLIP_LOW} <= T(6.0) or {_CLIP_LOW} != {_CLIP_LOW} else T(6.0)"


def _conv_epilogue(conv, step, kept, viewed):
    """conv's epilogue (bias, act, cout, off) that does what `step` does, or None."""
    src = conv.out
    if conv.helper not in FORWARD_CONVOLUTIONS or conv.epilogue is not None or \
            src.ndim != 4 or step.out.dtype != src.dtype or \
            src.dtype not in ("float32", "float64") or \
            not all(isinstance(d, int) and d > 0 for d in src.shape + conv.args[1].shape) or \
            src.role != "temp" or src.base is not None or src.name in viewed or \
            (src.name in kept and step.out.name != src.name):
        return None
    out, cout, off = step.out, 0, 0
    if step.placed is not None:
        shape, axis, start = step.placed
        if axis != 3 or tuple(shape) != tuple(src.shape):
            return None
        cout, off = src.shape[3], start
    elif tuple(out.shape) != tuple(src.shape):
        return None
    if out.name != src.name and (out.role != "temp" or out.base is not None or
                                 out.name in viewed):
        return None
    loop = ("i0", "i1", "i2", "i3")
    reads = [(v, load) for v, load in step.expr.loads.items() if load.buffer.name == src.name]
    others = [(v, load) for v, load in step.expr.loads.items() if load.buffer.name != src.name]
    if len(reads) != 1 or tuple(reads[0][1].index) != loop or len(others) > 1:
        return None
    current, bias, act = reads[0][0], None, 0
    stmts = list(step.expr.stmts)
    if others:
        var, load = others[0]
        b = load.buffer
        if b.dtype != src.dtype or b.ndim < 1 or b.shape[-1] != src.shape[3] or \
                any(d != 1 for d in b.shape[:-1]) or \
                tuple(load.index) != ("0",) * (b.ndim - 1) + ("i3",) or not stmts or \
                stmts[0][1] not in (f"{current} + {var}", f"{var} + {current}"):
            return None
        bias, current = b, stmts.pop(0)[0]
    if stmts and stmts[0][1] == _RELU.format(current):
        act, current = 1, stmts.pop(0)[0]
    elif stmts and stmts[0][1] == _RELU6.format(current):
        act, current = 4, stmts.pop(0)[0]
    if stmts or step.expr.result != current:
        return None
    return bias, act, cout, off


def _foldable_pad(pad, conv, kept):
    if not (isinstance(conv, ir.Window) and conv.helper == "conv2d" and
            isinstance(pad, ir.Place) and pad.zero_fill and len(pad.parts) == 1):
        return False
    out = pad.out
    (src, axis, start), = pad.parts
    if conv.args[0].name != out.name or out.name in kept or out.role != "temp" or \
            out.base is not None or src.name == out.name or axis not in (1, 2) or \
            src.ndim != 4 or out.ndim != 4:
        return False
    if not all(isinstance(d, int) for d in (start, src.shape[axis], out.shape[axis])) or \
            start < 0 or start + src.shape[axis] > out.shape[axis]:
        return False
    return all(a == b for k, (a, b) in enumerate(zip(src.shape, out.shape)) if k != axis)


def _dead_after(steps, j, name):
    """True when no step after steps[j] reads buffer `name` before one writes it anew."""
    for step in steps[j + 1:]:
        if any(b.name == name for b in ir.step_reads(step)):
            return False
        if step.out.name == name:
            return True
    return True


def winograd_constants(program, values, pack=False):
    """Transform constant 3x3 kernels for Winograd once, before code is generated: each
    forward stride-1 3x3 convolution of `program` whose kernel is a constant (an inference
    graph's weights; `values` holds the program's constants in order) and that pays as
    Winograd with the kernel transformed beforehand (use_winograd(..., pretransformed))
    becomes a `conv2d_winograd` step (conv_gemm's CONV2D_WINOGRAD_U) reading a new
    constant U = winograd_kernel(w, side), appended to `program.consts` (one per kernel,
    however many steps read it; `side` 4, F(4x4, 3x3), for outputs at least
    WINOGRAD_F4_MIN_SIDE each way, see windows.winograd_side, else 2). Returns the new constants' arrays, to pass after `values`.
    A kernel that is a parameter (training) keeps CONV2D_WINOGRAD: it changes at every
    step. With `pack`, on a CPU where graphnn's tile kernel runs (packed.available()), a
    float32 U with at least packed.WINOGRAD_MIN_OUTPUTS output channels is also packed (its
    16 or 36 matrices ci x co, each by packed.pack_kernel) and the step is a
    `conv2d_winograd_packed` (CONV2D_WINOGRAD_PACKED)."""
    pack = pack and packed.available()
    made, arrays = {}, []
    for step in program.steps:
        if not isinstance(step, ir.Window) or step.helper != "conv2d":
            continue
        x, w = step.args
        s = step.params[0]
        oh, ow = step.out.shape[1:3]
        if w.role != "const" or not all(isinstance(d, int) for d in w.shape + (oh, ow)) or \
                not use_winograd(*w.shape[:2], s, *w.shape[2:], oh, ow, pretransformed=True):
            continue
        if w.name not in made:
            index = len(program.consts)
            side = winograd_side(oh, ow)
            u = windows.winograd_kernel(np.asarray(values[w.arg_index]), side)
            helper = "conv2d_winograd"
            if pack and u.dtype == np.float32 and u.shape[3] >= packed.WINOGRAD_MIN_OUTPUTS:
                t, ci = u.shape[0], u.shape[2]
                u = np.stack([packed.pack_kernel(m.reshape(1, 1, ci, -1))
                              for m in u.reshape(t * t, ci, -1)]).reshape(t, t, ci, -1)
                helper = "conv2d_winograd_packed"
            made[w.name] = ir.Buffer(f"c{index}", u.shape, w.dtype, "const", index), helper
            program.consts.append(made[w.name][0])
            arrays.append(u)
        u, step.helper = made[w.name]
        # (the 3x3 kernel too, for windows that hold a NaN or an infinity: see
        # windows.conv_gemm)
        step.args = [x, u, w]
        step.comment = (step.comment + "\n" if step.comment else "") + \
            f"(Winograd, {w.name} transformed beforehand" \
            f"{' and packed' if step.helper.endswith('_packed') else ''}: {u.name})"
    return arrays


def packed_constants(program, values):
    """Pack constant convolution kernels once, before code is generated: each forward
    convolution of `program` still a `conv2d` step (after winograd_constants) whose kernel
    is a float32 constant becomes a `conv2d_packed` step (conv_gemm's CONV2D_PACKED)
    reading a new constant, packed.pack_kernel(w), appended to `program.consts` (one per
    kernel, however many steps read it), when this CPU runs graphnn's tile kernel
    (packed.available(): AVX-512) and the kernel has packed.PACK_MIN_OUTPUTS output
    channels or more. Returns the new constants' arrays, to pass after
    `values`. A kernel that is a parameter keeps BLAS: packing it at every step is what
    BLAS does itself."""
    if not packed.available():
        return []
    made, arrays = {}, []
    for step in program.steps:
        if not isinstance(step, ir.Window) or step.helper != "conv2d":
            continue
        x, w = step.args
        if w.role != "const" or w.dtype != "float32" or \
                not all(isinstance(d, int) and d > 0 for d in w.shape) or \
                w.shape[3] < packed.PACK_MIN_OUTPUTS:
            continue
        if w.name not in made:
            array = packed.pack_kernel(np.asarray(values[w.arg_index], np.float32))
            index = len(program.consts)
            made[w.name] = ir.Buffer(f"c{index}", array.shape, w.dtype, "const", index)
            program.consts.append(made[w.name])
            arrays.append(array)
        step.helper = "conv2d_packed"
        step.args = [x, made[w.name]]
        step.comment = (step.comment + "\n" if step.comment else "") + \
            f"({w.name} packed beforehand: {made[w.name].name})"
    return arrays


def _conv_block_bytes(step):
    """Source for the bytes of one patch-matrix block of a convolution step (see
    kernels/windows.py), or None when it needs none (1x1, stride 1, unpadded); for a
    Winograd convolution, the bytes of its scratch."""
    s, ph, pw = step.params
    winograd = _winograd(step)
    if winograd:
        return f"({winograd[1]}) * {_itemsize(step.out.dtype)}"
    if step.helper in ("conv2d", "conv2d_winograd", "conv2d_packed"):
        image, kernel, grid = step.args[0], step.args[1], step.out
    elif step.helper == "conv2d_grad_input":
        image, kernel, grid = step.out, step.args[1], step.args[0]
    else:
        image, kernel, grid = step.args[0], step.out, step.args[1]
    kh, kw, ci = kernel.shape[:3]
    if is_pointwise(kh, kw, s, ph, pw):
        return None
    itemsize = _itemsize(step.out.dtype)
    rows = " * ".join(str(d) for d in (image.shape[0],) + tuple(grid.shape[1:3]))
    if all(isinstance(d, int) for d in (kh, kw, ci)):
        cols = kh * kw * ci
        return f"min({rows}, {col_block_rows(cols, itemsize)}) * {cols * itemsize}"
    # a dim bound at run time (channels): the same rule, in the generated source
    cols = f"({kh} * {kw} * {ci})"
    block = (f"max({windows.COL_MIN_ROWS}, {windows.COL_BYTES} // "
             f"max(1, {cols} * {itemsize}))")
    return f"min({rows}, {block}) * {cols} * {itemsize}"


def _conv_scratch(steps):
    """The uint8 buffer that holds one patch-matrix block for every convolution (they run
    one after another): as large as the largest block, a multiple of 8 bytes; None when no
    convolution needs one."""
    sizes = [_conv_block_bytes(s) for s in steps
             if isinstance(s, ir.Window) and s.helper in GEMM_HELPERS]
    sizes = sorted({b for b in sizes if b is not None})
    if not sizes:
        return None
    size = sizes[0] if len(sizes) == 1 else f"max({', '.join(sizes)})"
    return ir.Buffer(SCRATCH, (f"({size} + 7) // 8 * 8",), "uint8")


def _emit_state_copy(em, state, value, source):
    """state[...] = source (value's buffer, or a copy of it) as a flat loop: Numba compiles
    an array assignment through its broadcasting machinery, 0.6-5 s the first time in a
    process, and a loop in about 0.2 s."""
    if state.ndim == 0:
        em.emit(f"{state.name}[()] = {source}[()]")
        return
    se = em.for_step()
    se.flat_views([state, value] if source == value.name else [state])
    em.lines += se.setup
    flat = f"{value.name}_f"
    if source != value.name:
        flat = f"{source}_f"
        em.emit(f"{flat} = {source if state.ndim == 1 else source + '.reshape(-1)'}")
    em.emit(f"for k in range({state.name}_f.size):")
    em.emit(f"    {state.name}_f[k] = {flat}[k]")


def _shape_mismatch(program):
    """Conditions, one per input axis, true when the input arrays' shapes are not those of
    the program: a static dim differs, a dim variable is below 1 (an empty batch) or an
    axis disagrees with where its dim variable was bound."""
    conds = [f"{dim} < 1" for dim in program.dims]
    for index, buf in enumerate(program.inputs):
        for axis, dim in enumerate(buf.shape):
            if program.dims.get(dim) != (index, axis):
                conds.append(f"{buf.name}.shape[{axis}] != {dim}")
    return conds


class _Memory:
    """Where `program` finds memory for the buffers it writes. Outputs are new arrays (or a
    recycled earlier result: `recycled` maps an output buffer's name to its argument);
    other temporaries are views of the workspace at offsets `_w<k>` computed, with the
    size the workspace needs, before the first step (`prologue`). 0-d temporaries are
    plain allocations (a few bytes)."""

    def __init__(self, recycled, life=None):
        self.recycled = recycled
        self.life = life  # buffer name -> (first step, last step), see lifetimes()
        # (size in bytes as source, whether it depends on a dim variable, buffer name)
        self.parts = []

    def alloc(self, em, buf, zero):
        shape, dtype = _shape_src(buf.shape), _dtype_src(buf.dtype)
        static = _static_bytes(buf)
        if buf.name in self.recycled:
            arg = self.recycled[buf.name]
            em.emit_setup(f"{buf.name} = {arg} if {arg}.shape == {shape} else "
                          f"np.empty({shape}, {dtype})")
        elif buf.ndim == 0 or (static is not None and static < WORKSPACE_MIN):
            em.emit_setup(f"{buf.name} = np.empty({shape}, {dtype})")
        else:
            k = len(self.parts)
            size = " * ".join([str(d) for d in buf.shape + (_itemsize(buf.dtype),)])
            self.parts.append((size, static is None, buf.name))
            view = f"workspace[_w{k}:_w{k} + {size}].view({dtype})"
            if buf.ndim > 1:
                view += f".reshape({shape})"
            if static is None:
                # a small array is quicker to allocate than to view (Numba checks views)
                view += f" if {size} >= {WORKSPACE_MIN} else np.empty({shape}, {dtype})"
            em.emit_setup(f"{buf.name} = {view}")
        if zero:
            em.emit_setup(f"{buf.name}[...] = 0")

    def offsets(self):
        """Lines binding the offsets `_w<k>` and `_wend`, the bytes the workspace needs.
        Temporaries whose sizes are known here share memory where their lifetimes do not
        overlap (see pack_workspace); the others follow them, one after another. The room
        a size whose dims are variables takes is bound once per distinct size
        (`_room<j>`): a deep graph has thousands of temporaries of a few sizes, and a
        conditional expression on each of thousands of lines made CPython's compile() of
        the library driver take 0.1 s instead of 0.03 s."""
        life = self.life or {}
        static = [(k, _constant_bytes(size), life.get(name))
                  for k, (size, dynamic, name) in enumerate(self.parts)]
        static = [(k, b, span) for k, b, span in static if b is not None and span]
        placed, top = pack_workspace([(b, span) for _, b, span in static])
        at = {k: offset for (k, _, _), offset in zip(static, placed)}
        lines, rooms, end = [], {}, str(top)
        for k, (size, dynamic, _) in enumerate(self.parts):
            if k in at:
                lines.append(f"_w{k} = {at[k]}")
                continue
            lines.append(f"_w{k} = {end}")
            room = _ROUNDED.format(size=size)
            if dynamic:  # (allocated instead when small, see alloc)
                if size not in rooms:
                    rooms[size] = f"_room{len(rooms)}"
                room = rooms[size]
            end = f"_w{k} + {room}"
        bound = [f"{name} = {_ROUNDED.format(size=size)} if {size} >= {WORKSPACE_MIN} else 0"
                 for size, name in rooms.items()]
        return bound + lines + [f"_wend = {end}"]

    def prologue(self):
        """The offsets, and the check that the caller's workspace is large enough: when it
        is not, nothing has run yet and the caller makes one of `workspace_bytes(...)`."""
        if not self.parts:
            return []
        lines = ["# temporaries: views of the workspace (kept by the caller between calls)"]
        lines += self.offsets() + ["if workspace.size < _wend:",
                                   f"    raise ValueError({WORKSPACE_TOO_SMALL!r})"]
        return ["    " + line for line in lines]


def lifetimes(program):
    """{buffer name: (first step, last step)} of each buffer the steps write: from the
    step that first writes it to the last that reads or writes it or a view of it (a
    reshape's result, a buffer whose `base` it is); the convolutions' shared scratch from
    the first convolution to the last; outputs and new state values (and what they view)
    live to the end."""
    root = {}

    def of(buf):
        name = buf.name
        while True:
            if name in root:
                name = root[name]
            elif buf is not None and buf.base is not None and buf.name == name:
                name, buf = buf.base.name, buf.base
            else:
                return name
    life = {}

    def touch(name, k, write):
        if name in life:
            life[name][1] = k
        elif write:
            life[name] = [k, k]
    steps = program.steps
    for k, step in enumerate(steps):
        if isinstance(step, ir.Reshape):
            root[step.out.name] = of(step.src)
            touch(of(step.src), k, False)
            continue
        for buf in ir.step_reads(step):
            # (most buffers are no view: their own root, found without a call)
            span = life.get(buf.name if buf.base is None and buf.name not in root
                             else of(buf))
            if span is not None:
                span[1] = k
        if isinstance(step, ir.Window) and step.helper in GEMM_HELPERS:
            touch(SCRATCH, k, True)
        touch(of(step.out), k, True)
    for buf in list(program.outputs) + [b for pair in program.updates for b in pair]:
        if of(buf) in life:
            life[of(buf)][1] = len(steps)
    return {name: tuple(span) for name, span in life.items()}


PACK_RECENT = 16  # the dead temporaries pack_workspace looks at: the last touched


def pack_workspace(parts):
    """Offsets for temporaries [(bytes, (first step, last step))], in the order they are
    first written, and the bytes they need in all: each goes into the free room (between
    the live ones, or above them all) where a temporary touched shortly before used to be
    (the PACK_RECENT last dead ones are looked at), so that its first writes find cache
    lines still warm (an arena that gave every temporary memory of its own swept 9 MB per
    SqueezeNet call through a 2 MB L2 cache); ties go to the smallest room that fits, then
    the lowest offset. Two temporaries whose lifetimes share a step never overlap."""
    top = 0
    live, dead = [], []  # (offset, end, last step)
    order = sorted(range(len(parts)), key=lambda k: parts[k][1][0])
    result = [0] * len(parts)
    for k in order:
        size = (parts[k][0] + WORKSPACE_ALIGN - 1) // WORKSPACE_ALIGN * WORKSPACE_ALIGN
        first, last = parts[k][1]
        # (every temporary placed so far was first written at or before `first`)
        dead += [t for t in live if t[2] < first]
        live = sorted(t for t in live if t[2] >= first)
        dead = sorted(dead, key=lambda t: t[2])[-PACK_RECENT:]
        rooms, at = [], 0
        for o, e, _ in live:
            if o - at >= size:
                rooms.append((at, o - at))
            at = max(at, e)
        rooms.append((at, None))
        best = None
        for start, room in rooms:
            end = None if room is None else start + room
            # the room's ends, and where each dead temporary in it starts or ends
            spots = {start} | ({end - size} if end is not None else set())
            spots |= {p for o, e, _ in dead for p in (o, e - size)
                      if p >= start and (end is None or p + size <= end)}
            for offset in sorted(spots):
                warm = max((l for o, e, l in dead if o < offset + size and offset < e),
                           default=-1)
                key = (-warm, room if room is not None else float("inf"), offset)
                if best is None or key < best[0]:
                    best = (key, offset)
        offset = best[1]
        result[k] = offset
        live.append((offset, offset + size, last))
        top = max(top, offset + size)
    return result, top


def _constant_bytes(size):
    """A size in bytes given as source, as an int when it names no dim variable."""
    if isinstance(size, int):
        return size
    if not re.fullmatch(r"(?:[\d\s()+*/%,-]|min\(|max\()*", size):
        return None
    return int(eval(size, {"__builtins__": {}, "min": min, "max": max}))


def _static_bytes(buf):
    """The buffer's size in bytes, or None when a dim variable is part of its shape."""
    if any(isinstance(d, str) for d in buf.shape):
        return None
    return int(math.prod(buf.shape)) * _itemsize(buf.dtype)


@functools.lru_cache(maxsize=None)  # (asked for every temporary of a deep graph)
def _itemsize(dtype):
    return np.dtype(dtype).itemsize


def _alloc(em, buf, allocated, zero=False):
    if buf.name in allocated:
        return
    allocated.add(buf.name)
    em.memory.alloc(em, buf, zero)


def recycled_outputs(program):
    """The outputs whose earlier results `program` can write again: arrays of at least one
    axis that the program allocates itself (an output that is an input, state, constant or
    view is returned as a copy), each buffer once."""
    seen, indices = set(), []
    for k, b in enumerate(program.outputs):
        if b.role == "temp" and b.ndim >= 1 and b.base is None and b.name not in seen:
            indices.append(k)
        seen.add(b.name)
    return tuple(indices)


def run(module, *arrays):
    """Call a generated module's `program` with these inputs, states and constants, a
    workspace of the size it needs and nothing to recycle; returns its outputs (a tuple)."""
    inputs = arrays[:module.workspace_bytes.__code__.co_argcount]
    workspace = np.empty(module.workspace_bytes(*inputs), np.uint8)
    return module.program(*arrays, *module.recycle_nothing(), workspace)


def _emit_loads(em, expr, index_of, suffix=""):
    for var, load in expr.loads.items():
        em.emit(f"{var} = {load.buffer.name}{suffix}[{index_of(load)}]")


def _emit_stmts(em, expr, dtype):
    for var, code in expr.stmts:
        em.emit(f"{var} = {_typed(code, dtype)}")


_LOOP_INDEX = re.compile(r"\bi\d+\b")


def _flat_ok(expr, shape):
    """True when every load reads its buffer at the loop index or is a 0-d scalar, and no
    statement uses a loop index itself (a flat loop has none)."""
    loopvars = tuple(f"i{k}" for k in range(len(shape)))
    if any(_LOOP_INDEX.search(code) for _, code in expr.stmts) or \
            _LOOP_INDEX.search(expr.result):
        return False
    for load in expr.loads.values():
        if load.buffer.ndim == 0:
            continue
        if tuple(load.index) != loopvars or tuple(load.buffer.shape) != tuple(shape):
            return False
    return True


GEMV_MIN_ITEMS = 1 << 19  # see uses_gemv()


def uses_gemv(step):
    """Whether a Matmul step runs as BLAS gemv (kernels/blas.py `gemv`): a product with one
    row or one column (batch-1 inference of a dense layer), sizes known when the code is
    generated, and a matrix of at least GEMV_MIN_ITEMS items. gemm packs the matrix
    before multiplying; gemv streams it once (measured 1 thread, float32: 9216 x 4096
    weights 8 ms against 26-36 ms, 2048 x 1000 0.28 against 0.5-1.0 ms; at 512 x 512
    the two tie, and below gemm is a little quicker)."""
    if not isinstance(step, ir.Matmul):
        return False
    m, n = step.out.shape
    k = step.a.shape[0 if step.trans_a else 1]
    if not all(isinstance(d, int) for d in (m, n, k)) or min(m, n, k) < 1:
        return False
    return (m == 1 or n == 1) and k * max(m, n) >= GEMV_MIN_ITEMS


def host_constants(program):
    """Give each HostCall step of `program` its function as a new constant (appended to
    `program.consts`, its `fn`); returns the functions, to pass after the other constants.
    Only a library driver, which is Python, calls them (see generate_library)."""
    functions = []
    for step in program.steps:
        if isinstance(step, ir.HostCall):
            index = len(program.consts)
            step.fn = ir.Buffer(f"c{index}", (), "object", "const", index)
            program.consts.append(step.fn)
            functions.append(step.call)
    return functions


def _emit_step(em, step, allocated, loop, needed):
    if isinstance(step, ir.HostCall):  # (a library driver's line: Python)
        _alloc(em, step.out, allocated)
        em.emit(f"{step.fn.name}({', '.join(b.name for b in [step.out, *step.args])})")
    elif isinstance(step, ir.Elementwise):
        _emit_elementwise(em, step, allocated, loop)
    elif isinstance(step, ir.Reduce):
        _emit_reduce(em, step, allocated, loop)
    elif isinstance(step, ir.ArgmaxMask):
        _emit_argmax_mask(em, step, allocated)
    elif isinstance(step, ir.Matmul):
        _alloc(em, step.out, allocated)
        dtype = step.out.dtype
        alpha, beta = (f"np.{dtype}({_number_literal(v)})" for v in (step.alpha, step.beta))
        # np.bool_ flags: Numba compiles gemm once, not once per literal True/False pair
        em.emit(f"{'gemv' if uses_gemv(step) else 'gemm'}(np.bool_({step.trans_a}), "
                f"np.bool_({step.trans_b}), {alpha}, "
                f"{step.a.name}, {step.b.name}, {beta}, {step.out.name})")
    elif isinstance(step, ir.BatchMatmul):
        _alloc(em, step.out, allocated)
        dtype = step.out.dtype
        em.emit(f"batch_gemm(np.bool_({step.trans_a}), np.bool_({step.trans_b}), "
                f"np.{dtype}(1.0), np.{dtype}(0.0), {step.a.name}, {step.b.name}, "
                f"{step.out.name})")
    elif isinstance(step, ir.Window):
        _alloc(em, step.out, allocated)
        if step.helper in GEMM_HELPERS:
            # one patch-matrix block, in the scratch memory every convolution shares
            if em.scratch is not None and em.scratch.name not in allocated:
                _alloc(em, em.scratch, allocated)
            scratch = (f"{SCRATCH}.view({_dtype_src(step.out.dtype)})" if em.scratch is not None
                       else f"np.empty(0, {_dtype_src(step.out.dtype)})")
            # np.intp: Numba compiles conv_gemm once, not once per mode, stride and padding
            ints = [f"np.intp({p})" for p in (GEMM_HELPERS[step.helper],) + step.params]
            buffers = [b.name for b in step.args[:2]]
            winograd = _winograd(step)
            if winograd:  # mode CONV2D_WINOGRAD(_U), whose "stride" is the tiles per round
                mode = GEMM_HELPERS[step.helper] if step.helper != "conv2d" \
                    else windows.CONV2D_WINOGRAD
                ints = [f"np.intp({p})" for p in (mode, winograd[0]) + step.params[1:]]
            # (every call passes the epilogue's arguments: one compiled conv_gemm)
            bias, act, cout, off = step.epilogue or (None, 0, 0, 0)
            if bias is not None and bias.ndim != 1:
                em.flat_views([bias])
            bias = f"np.empty(0, {_dtype_src(step.out.dtype)})" if bias is None else \
                bias.name if bias.ndim == 1 else f"{bias.name}_f"
            code = act + (2 if step.epilogue and step.epilogue[0] is not None else 0)
            epilogue = f"{bias}, np.intp({code}), np.intp({cout}), np.intp({off})"
            call = f"conv_gemm({', '.join(ints[:1] + buffers + ints[1:])}, {scratch}, " \
                   f"{step.out.name}, {epilogue})"
            if len(step.args) > 2:  # Winograd from U: True when an output was not finite
                em.emit(f"if {call}:")  # (then the direct loops: windows.conv2d_direct)
                em.emit(f"    conv2d_direct({step.args[0].name}, {step.args[2].name}, "
                        f"np.intp({step.params[1]}), np.intp({step.params[2]}), "
                        f"{step.out.name}, {epilogue})")
            else:
                em.emit(call)
        else:
            # np.intp: one compiled helper for every window size and stride
            ints = [f"np.intp({p})" for p in step.params]
            buffers = [b.name for b in step.args]
            em.emit(f"{step.helper}({', '.join(buffers + ints + [step.out.name])})")
    elif isinstance(step, ir.Reshape):
        allocated.add(step.out.name)
        em.reshape(step.out, step.src, needed)
    elif isinstance(step, ir.Place):
        if step.zero_fill and step.out.name in allocated:
            em.emit(f"{step.out.name}[...] = 0")  # a reused buffer: clear it
        _alloc(em, step.out, allocated, zero=step.zero_fill)
        # explicit copy loops: Numba compiles a strided slice assignment several times
        # slower (about 0.5 s each), and concats and pads are common. Every buffer is
        # C-contiguous, so a part is `outer` contiguous runs of the source, each copied to
        # its place in the output over flat unsigned indices (the copies vectorise: a
        # channel concat ran 3-4x slower as a loop nest over all axes)
        out = step.out.name
        em.flat_views([step.out] + [src for src, _, _ in step.parts])
        for src, axis, start in step.parts:
            inner = "".join(f" * {d}" for d in src.shape[axis + 1:])
            outer = " * ".join(str(d) for d in src.shape[:axis]) or "1"
            em.emit(f"for i0 in range({outer}):")
            em.emit(f"    for i1 in range({src.shape[axis]}{inner}):")
            em.emit(f"        {out}_f[np.uintp(i0 * ({step.out.shape[axis]}{inner}) + "
                    f"{start}{inner} + i1)] = "
                    f"{src.name}_f[np.uintp(i0 * ({src.shape[axis]}{inner}) + i1)]")
    else:
        raise TypeError(f"unknown kernel step {type(step).__name__}")


def _flat_buffers(step):
    """The buffers an Elementwise or Reduce step reads and writes through their flat views
    `<name>_f` (its loop is one flat loop), or None (its loops follow the axes, or it
    writes a 0-d result)."""
    arrays = {v: l for v, l in step.expr.loads.items() if l.buffer.ndim != 0}
    body = ir.ScalarExpr(arrays, step.expr.stmts, step.expr.result)
    buffers = [l.buffer for l in arrays.values()]
    if isinstance(step, ir.Elementwise):
        ok = step.out.ndim != 0 and step.placed is None and _flat_ok(body, step.out.shape)
        return [step.out] + buffers if ok else None
    kept = any(k not in step.axes for k in range(len(step.domain)))
    return buffers if not kept and _flat_ok(body, step.domain) else None


def _emit_elementwise(em, step, allocated, loop):
    out, expr = step.out, step.expr
    _alloc(em, out, allocated)
    scalars = {v: l for v, l in expr.loads.items() if l.buffer.ndim == 0}
    for var, load in scalars.items():
        em.emit(f"{var} = {load.buffer.name}[()]")
    arrays = {v: l for v, l in expr.loads.items() if l.buffer.ndim != 0}
    body = ir.ScalarExpr(arrays, expr.stmts, expr.result)
    if out.ndim == 0:
        _emit_loads(em, body, lambda l: "()")
        _emit_stmts(em, body, out.dtype)
        em.emit(f"{out.name}[()] = {_typed(expr.result, out.dtype)}")
        return
    flat = _flat_buffers(step)
    if flat is not None:
        em.flat_views(flat)
        em.emit(f"for k in {loop}({out.name}_f.size):")
        em.indent()
        _emit_loads(em, body, lambda l: "k", "_f")
        _emit_stmts(em, body, out.dtype)
        em.emit(f"{out.name}_f[k] = {_typed(expr.result, out.dtype)}")
        em.dedent()
        return
    shape, target = out.shape, f"{out.name}[{', '.join(f'i{k}' for k in range(out.ndim))}]"
    if step.placed is not None:
        # a part of a concatenation, stored in its place through the flat view at an
        # unsigned index (as a subscript, `i + start` is checked for a negative index at
        # every store, and the loop no longer vectorises: 6x slower)
        shape, axis, start = step.placed
        em.flat_views([out])
        flat = "i0" if axis else f"(i0 + {start})"
        for k in range(1, out.ndim):
            flat = f"({flat} * {out.shape[k]} + i{k}{f' + {start}' if k == axis else ''})"
        target = f"{out.name}_f[np.uintp{flat}]"
    order = list(range(len(shape)))
    if _last_axes_swapped(body, shape):
        order[-2:] = order[:-3:-1]
    for depth, k in enumerate(order):
        em.emit(f"for i{k} in {loop if depth == 0 else 'range'}({shape[k]}):")
        em.indent()
    _emit_loads(em, body, lambda l: ", ".join(l.index))
    _emit_stmts(em, body, out.dtype)
    em.emit(f"{target} = {_typed(expr.result, out.dtype)}")
    em.dedent(out.ndim)


SWAP_MAX_INNER = 4  # see _last_axes_swapped


def _last_axes_swapped(body, shape):
    """Whether an elementwise step's innermost two loops go the other way round: when its
    last axis is tiny (at most SWAP_MAX_INNER: an image's colour channels) and a load
    reads along the axis before it (NCHW -> NHWC at the input of an ONNX model), so that
    the inner loop runs along that load's memory, not across it (224x224x3: 104 -> 27 µs;
    at 64 channels the loops stay: the other way round is 1.5x slower)."""
    if len(shape) < 2 or not isinstance(shape[-1], int) or shape[-1] > SWAP_MAX_INNER:
        return False
    before = f"i{len(shape) - 2}"
    return any(load.index and load.index[-1] == before for load in body.loads.values())


def _emit_reduce(em, step, allocated, loop):
    out, expr, domain = step.out, step.expr, step.domain
    _alloc(em, out, allocated)
    kept = [k for k in range(len(domain)) if k not in step.axes]
    init, combine = _reduce_rule(step.kind, out.dtype)
    scalars = {v: l for v, l in expr.loads.items() if l.buffer.ndim == 0}
    for var, load in scalars.items():
        em.emit(f"{var} = {load.buffer.name}[()]")
    arrays = {v: l for v, l in expr.loads.items() if l.buffer.ndim != 0}
    body = ir.ScalarExpr(arrays, expr.stmts, expr.result)
    flat = _flat_buffers(step)
    if flat is not None:
        em.flat_views(flat)
        em.emit(f"acc = {_typed(init, out.dtype)}")
        size = " * ".join(str(d) for d in domain) or "1"
        em.emit(f"for k in range({size}):")
        em.indent()
        _emit_loads(em, body, lambda l: "k", "_f")
        _emit_stmts(em, body, out.dtype)
        em.emit(combine.format(r=_typed(expr.result, out.dtype)))
        em.dedent()
        _emit_store(em, step, [])
        return
    if kept and max(step.axes) < max(kept):
        # A kept axis is innermost in memory (e.g. a bias gradient summed over the batch):
        # walk the domain in memory order and accumulate into the output row (into rows of
        # its own when the finishing expression reads the output's old values: an SGD step
        # on a bias written in place, b - c * sum(g, axis=0))
        rows = out.name
        if step.post is not None and any(l.buffer.name == out.name
                                         for l in step.post.loads.values()):
            rows = "acc_rows"
            em.emit(f"acc_rows = np.empty_like({out.name})")
        em.emit(f"{rows}[...] = {_typed(init, out.dtype)}")
        for k in range(len(domain)):
            em.emit(f"for i{k} in range({domain[k]}):")
            em.indent()
        _emit_loads(em, body, lambda l: ", ".join(l.index))
        _emit_stmts(em, body, out.dtype)
        target = f"{rows}[{', '.join(f'i{k}' for k in kept)}]"
        em.emit(combine.replace("acc", target).format(r=_typed(expr.result, out.dtype)))
        em.dedent(len(domain))
        if step.post is not None:  # finish each result in a second pass
            for k in kept:
                em.emit(f"for i{k} in range({domain[k]}):")
                em.indent()
            em.emit(f"acc = {target}")
            _emit_store(em, step, kept)
            em.dedent(len(kept))
        return
    for depth, k in enumerate(kept):
        em.emit(f"for i{k} in {loop if depth == 0 else 'range'}({domain[k]}):")
        em.indent()
    em.emit(f"acc = {_typed(init, out.dtype)}")
    for k in step.axes:
        em.emit(f"for i{k} in range({domain[k]}):")
        em.indent()
    _emit_loads(em, body, lambda l: ", ".join(l.index))
    _emit_stmts(em, body, out.dtype)
    em.emit(combine.format(r=_typed(expr.result, out.dtype)))
    em.dedent(len(step.axes))
    _emit_store(em, step, kept)
    em.dedent(len(kept))


def _reduce_rule(kind, dtype):
    """(identity, combine statement of `acc` and `{r}`) of a reduction over `dtype`. A max
    starts from the dtype's lowest value (-inf for floats, iinfo.min for integers) and keeps
    the first NaN it meets, as NumPy's max does."""
    if kind == "sum":
        return "T(0)", "acc += {r}"
    if np.dtype(dtype).kind == "f":
        return "T(-np.inf)", "acc = {r} if {r} > acc or {r} != {r} else acc"
    return f"T({np.iinfo(dtype).min})", "acc = {r} if {r} > acc else acc"


def _emit_store(em, step, kept):
    """out[kept index] = acc, or the step's `post` expression of acc."""
    out, post = step.out, step.post
    index = ", ".join(f"i{k}" for k in kept) if kept else "()"
    if post is None:
        em.emit(f"{out.name}[{index}] = acc")
        return
    _emit_loads(em, post, lambda l: ", ".join(l.index) if l.buffer.ndim else "()")
    _emit_stmts(em, post, out.dtype)
    em.emit(f"{out.name}[{index}] = {_typed(post.result, out.dtype)}")


def _emit_argmax_mask(em, step, allocated):
    out, src = step.out, step.src
    _alloc(em, out, allocated, zero=True)
    if out.ndim == 0:
        em.emit(f"{out.name}[()] = 1")
        return
    em.emit(f"{out.name}[...] = 0")
    kept = [k for k in range(src.ndim) if k not in step.axes]
    for k in kept:
        em.emit(f"for i{k} in range({src.shape[k]}):")
        em.indent()
    em.emit(f"best = {src.name}[{', '.join('0' if k in step.axes else f'i{k}' for k in range(src.ndim))}]")
    for k in step.axes:
        em.emit(f"w{k} = 0")
    for k in step.axes:
        em.emit(f"for i{k} in range({src.shape[k]}):")
        em.indent()
    em.emit(f"v = {src.name}[{', '.join(f'i{k}' for k in range(src.ndim))}]")
    em.emit("if v > best or v != v and best == best:  # the first NaN wins, as in np.argmax")
    em.indent()
    em.emit("best = v")
    for k in step.axes:
        em.emit(f"w{k} = i{k}")
    em.dedent()
    em.dedent(len(step.axes))
    idx = ", ".join(f"w{k}" if k in step.axes else f"i{k}" for k in range(src.ndim))
    em.emit(f"{out.name}[{idx}] = 1")
    em.dedent(len(kept))


def indent(source, prefix="    "):
    return textwrap.indent(source, prefix)


# ---------------------------------------------------------------------------------------
# Library mode: kernels compiled one by one, sequenced by a plain-Python driver.
#
# Numba compiles a function together with every @njit function it calls (callees are
# linked into the caller's LLVM module), so ONE `program` for a graph of thousands of steps
# costs time and memory that grow faster than the graph (docs/ARCHITECTURE.md, "CPU
# path"). For large programs `generate_library` writes instead:
#   - one module per kernel, `def kernel(...)`, keyed by what it computes: a step's loops
#     with its buffers, dims and the integers of its loop bounds and subscripts turned
#     into arguments (so a 64-wide and a 128-wide relu, or the same layer in another
#     graph, are one kernel), or gemm, or a window helper. Each is cached on disk on its
#     own (kernels/loader.py names the module by the hash of its source), so it is
#     compiled once for every identical layer of every graph;
#   - one driver module, plain Python: the same shape checks, workspace plan and calling
#     convention as `program`, then one call per step into the kernels `K<k>` (bound by
#     the caller, see `bind_library`). A call from Python into a compiled kernel costs
#     about 0.3 µs plus its arguments' typing.

KERNEL_VERSION = "cpu-kernel-1"
# The driver's module globals K0, K1, ... name its kernels in this order (KERNELS lists
# the kernel modules' names, see bind_library).
_SIZE_SPANS = re.compile(r"\brange\([^()]*(?:\([^()]*\)[^()]*)*\)|\[[^\[\]]*\]")


WIDE_SUM = 8  # see _wide_sum()
_SCALAR_ARG = re.compile(r"\bnp\.(?:bool_|float32|float64)\([^()]*\)")
_LOAD_LINE = re.compile(r"^(\s+)(x\d+) = (\w+)\[k\]$")
_ADD_LINE = re.compile(r"^(\s+)(v\d+) = (\w+) \+ (\w+)$")
_WORD = re.compile(r"\w+")
_VALUE = re.compile(r"\b([xv])\d+\b")  # a step's loaded and computed values: x0, v3


def _wide_sum(lines, wide):
    """A flat elementwise step that adds many arrays (the gradient of a weight used at
    every time step: x1 + x2 + ... + xn, one load each) compiles in time proportional to
    n. When n >= WIDE_SUM, the driver adds those arrays itself with NumPy, in the same
    order (`wide` = x1 + x2, then += x3, ...), and the step's kernel reads `wide`: its
    code no longer grows with n, and one kernel serves every n. Returns (the step's new
    lines, the driver's lines), or None."""
    if sum(" + " in line for line in lines) < WIDE_SUM - 1:
        return None  # (most steps: fewer additions than a wide sum has)
    loads, adds = {}, []
    for number, line in enumerate(lines):
        m = _LOAD_LINE.match(line)
        if m:
            loads[m.group(2)] = (number, m.group(3))
        m = _ADD_LINE.match(line)
        if m:
            adds.append((number, m.group(2), m.group(3), m.group(4)))
    # (each word's count, found once: a sum of T terms asks about each of them)
    counts = collections.Counter(_WORD.findall("\n".join(lines)))

    def used_once(var):
        return counts[var] == 2  # defined once, read once
    best = None
    for start, (number, var, a, b) in enumerate(adds):
        if a not in loads or b not in loads or not used_once(a) or not used_once(b):
            continue
        chain, terms, last = [number], [a, b], var
        for number2, var2, a2, b2 in adds[start + 1:]:
            if number2 != chain[-1] + 1 or a2 != last or b2 not in loads \
                    or not used_once(b2) or not used_once(last):
                break
            chain.append(number2)
            terms.append(b2)
            last = var2
        if len(terms) >= WIDE_SUM and (best is None or len(terms) > len(best[1])):
            best = (chain, terms, last)
    if best is None:
        return None
    chain, terms, last = best
    indent = _ADD_LINE.match(lines[chain[0]]).group(1)
    drop = set(chain) | {loads[t][0] for t in terms}
    out = []
    for number, line in enumerate(lines):
        if number == chain[0]:
            out.append(f"{indent}{last} = {wide}[k]")
        if number not in drop:
            out.append(line)
    # the kernel's values renumbered in order of appearance: their numbers counted the
    # terms, and one kernel is to serve sums of every length
    names = {}
    out = [_VALUE.sub(lambda m: names.setdefault(m.group(0), f"{m.group(1)}{len(names)}"),
                      line) for line in out]
    arrays = [loads[t][1] for t in terms]
    driver = [f"{wide} = {arrays[0]} + {arrays[1]}"]
    driver += [f"{wide} += {name}" for name in arrays[2:]]
    return out, driver


_CONSTANT = re.compile(r"\bnp\.(float32|float64)\((-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\)")
# typed constants that stay in a kernel's code (they let LLVM simplify: x * 1, max(x, 0))
_KEPT_CONSTANTS = {0.0, 1.0, -1.0, 2.0, 0.5}


def _kernel_template(lines, buffers, dims):
    """A step's loops with each buffer (or its flat view) renamed `buf<k>`, each size
    renamed `n<k>` and each typed constant `c<k>`, k numbering them in order of appearance:
    a dim variable anywhere, an integer inside `range(...)` or a subscript, a constant
    np.float32(...) other than 0, +-1, 2 and 1/2 (a learning rate, a leaky relu's slope:
    one kernel serves every value). Returns (text, parameters, arguments): the arguments
    are the buffer and dim names, the integers and the constants, in parameter order."""
    buf_params, size_params, args_buf, args_size = [], [], [], []
    const_params, args_const = [], []
    dim_param = {}

    def constant(match):
        if float(match.group(2)) in _KEPT_CONSTANTS:
            return match.group(0)
        if match.group(0) not in args_const:
            args_const.append(match.group(0))
            const_params.append(f"c{len(const_params)}")
        return const_params[args_const.index(match.group(0))]

    def size(value):
        size_params.append(f"n{len(size_params)}")
        args_size.append(value)
        return size_params[-1]

    def integer(match):
        return size(match.group(0))

    def span(match):
        return _INTEGER.sub(integer, match.group(0))

    def rename(match):
        name = match.group(0)
        if name in dims:
            if name not in dim_param:
                dim_param[name] = size(name)
            return dim_param[name]
        if name in buffers or (name.endswith("_f") and name[:-2] in buffers):
            if name not in args_buf:
                args_buf.append(name)
                buf_params.append(f"buf{len(buf_params)}")
            return buf_params[args_buf.index(name)]
        return name
    text = []
    for line in lines:
        # names first (graph names such as c0 are not the parameters c<k>), then constants,
        # then integers (a parameter such as buf12 holds digits but no \b-integer)
        # (each pattern is tried only on lines that can hold a match: "np.float..." for a
        # constant, "range(" or "[" for a span; a deep graph has tens of thousands of lines)
        line = _NAME.sub(rename, line)
        if "np.float" in line:
            line = _CONSTANT.sub(constant, line)
        text.append(_SIZE_SPANS.sub(span, line) if "[" in line or "range(" in line
                    else line)
    return ("\n".join(text), buf_params + size_params + const_params,
            args_buf + args_size + args_const)


@functools.lru_cache(maxsize=4096)
def _kernel_module(def_lines, calls_helpers, matmul, approximate, parallel, batched=False,
                   vector=False):
    """The source of one kernel module: imports, what the kernel calls, then the kernel
    (`def_lines`, a tuple of lines whose function is or binds `kernel`); memoised, as a
    large program asks for the same kernel many times."""
    head = [f"# Generated by graphnn ({KERNEL_VERSION}, {GENERATOR_VERSION}, numba "
            f"{numba.__version__}): one kernel of the library. Do not edit.",
            "import numpy as np",
            "from math import erf, exp, log, log1p, sqrt, tanh",
            "from numba import njit, prange", ""]
    approximate = approximate and any(_APPROXIMATION_CALL.search(line) for line in def_lines)
    out = _with_support(head, def_lines, calls_helpers, matmul, approximate, batched, vector)
    def_lines = _approximated(def_lines) if approximate else list(def_lines)
    return "\n".join(out + [""] + def_lines) + "\n"


def _calls_approximation(line):
    return not line.lstrip().startswith("#") and _APPROXIMATION_CALL.search(line) is not None


_EXP_OF_NEGATED_ABS = "exp(-abs("


def _nonpositive_exps(line):
    """`line` with each exp(-abs(e)) (sigmoid's, softplus's and silu's) calling
    `exp_nonpositive`, the float32 exp for arguments that are never positive."""
    start = 0
    while (at := line.find(_EXP_OF_NEGATED_ABS, start)) >= 0:
        start = at + len(_EXP_OF_NEGATED_ABS)
        if at and (line[at - 1].isalnum() or line[at - 1] in "_."):
            continue  # another function's name ending in exp
        depth, end = 1, start
        while end < len(line) and depth:
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            end += 1
        if depth == 0 and line[end:end + 1] == ")":  # abs's parenthesis closes exp's
            line = line[:at] + "exp_nonpositive(" + line[at + len("exp("):]
            start = at + len("exp_nonpositive(")
    return line


def _approximated(lines):
    """`lines` (whole functions) as a float32 module runs them: with the vectorisable
    approximations of kernels/approx.py (see `_nonpositive_exps` and `_widened`)."""
    return _widened([_nonpositive_exps(line) for line in lines])


def _widened(lines):
    """`lines` (whole functions) with `wide_vectors()` first in each function that calls
    the float32 exp, tanh or erf (see kernels/approx.py); `_with_support` defines it when
    these are copied in."""
    lines = list(lines)
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        if not line.startswith("def "):
            continue
        end = next((j for j in range(k + 1, len(lines))
                    if lines[j][:1] not in ("", " ", "#")), len(lines))
        if any(_calls_approximation(body) for body in lines[k + 1:end]):
            out.append("    wide_vectors()")
    return out


def conv_code(program):
    """What the one `conv_gemm` module of `program`'s library serves: its convolutions'
    helpers and the markers of the parts they need (see _conv_code_used)."""
    return frozenset({s.helper for s in program.steps
                      if isinstance(s, ir.Window) and s.helper in GEMM_HELPERS} |
                     _conv_code_used(program))


def generate_library(program, parallel=False, approximate=True, more_conv_code=()):
    """Library mode (see above): (driver source, [kernel sources]); the driver's global
    `K<k>` is the `kernel` of the k-th kernel source. The driver module has the calling
    convention of `generate`'s: `program(*inputs, *states, *consts, *recycled, workspace)`,
    `workspace_bytes(*inputs)`, `RECYCLED`, `recycle_nothing()`. `more_conv_code` (see
    conv_code) is served by its conv_gemm module too when it has convolutions: programs
    that give the same set share that module (gn.repeat's block and its gradient)."""
    deco = (f"@njit(cache=True, no_cfunc_wrapper=True, error_model='numpy', "
            f"fastmath={FASTMATH}, "
            f"parallel={bool(parallel)})")
    approximate = approximate and _float32_only(program)
    args, recycled, em = _program_start(program)
    for index, bound in program.index_checks:
        name = program.inputs[index].name
        em.emit(f"if {name}.size and ({name}.min() < 0 or {name}.max() >= {int(bound)}):")
        em.emit(f"    raise ValueError({INDEX_OUT_OF_RANGE!r})")
    prologue_at = len(em.lines)
    allocated, loop, buffers, needed = _steps_context(program, args, em, parallel)
    kernels, numbers = [], {}  # kernel sources in order; source -> its number
    constants = {}  # a kernel's typed constant argument -> its name in the driver

    def kernel(source):
        if source not in numbers:
            numbers[source] = len(kernels)
            kernels.append(source)
        return f"K{numbers[source]}"
    convolutions = conv_code(program)
    convolutions = tuple(sorted(convolutions | set(more_conv_code) if convolutions else ()))
    # a deep graph repeats a few step structures thousands of times: each structure's
    # kernel and call are found once (see _loops_key), then each step costs a lookup
    calls = {}
    on_demand = set()  # kernels called only when needed (conv2d_direct)
    head, steps = em.lines, []  # each step's driver lines (see _fold_repeats)
    for number, step in enumerate(program.steps):
        em.lines = []
        steps.append(em.lines)
        se = em.for_step()
        if isinstance(step, (ir.Elementwise, ir.Reduce)):
            key, own = _loops_key(step, loop)
        elif isinstance(step, _LIBRARY_CALLS) and not (
                isinstance(step, ir.Window) and em.scratch is not None
                and em.scratch.name not in allocated):  # (else this step allocates it)
            key, own = _library_call_key(step)
        else:
            key, own = None, ()
        own_named = all(b.name in buffers for b in own)  # (else a kernel would name one)
        call = calls.get(key) if key is not None and own_named else None
        if call is not None:
            _alloc(se, step.out, allocated)
            if call[2] is not None:
                se.flat_views([own[k] for k in call[2]])
        else:
            call = None
            _emit_step(se, step, allocated, loop, needed)
        em.emit(f"# step {number}: {type(step).__name__.lower()}")
        for line in step.comment.splitlines():
            em.emit(f"# {line}")
        em.lines += se.setup
        if call is not None:
            name, pattern, _ = call
            em.emit(f"{name}({', '.join(_call_arguments(pattern, own))})")
        elif isinstance(step, _SHAREABLE):
            lines = se.lines
            wide = _wide_sum(lines, f"wide{number}_f") \
                if isinstance(step, ir.Elementwise) else None
            if wide:  # (see _wide_sum)
                lines = wide[0]
                em.lines += ["    " * em.depth + line for line in wide[1]]
                buffers.add(f"wide{number}")
            text, params, names = _kernel_template(lines, buffers, program.dims)
            names = [constants.setdefault(n, f"C{len(constants)}")
                     if n.startswith("np.") else n for n in names]
            body = (deco, f"def kernel({', '.join(params)}):", *text.splitlines())
            name = kernel(_kernel_module(body, (), False, approximate, parallel))
            em.emit(f"{name}({', '.join(map(str, names))})")
            if key is not None and own_named and not wide and key not in calls:
                calls[key] = _call_pattern(name, params, names, own, _flat_buffers(step))
        elif isinstance(step, _LIBRARY_CALLS):
            # gemm or a window helper: the kernel is the function itself (its scalars
            # are arguments, so one kernel serves every transpose, alpha and beta)
            helper = ("gemv" if uses_gemv(step) else "gemm") if isinstance(step, ir.Matmul) \
                else "batch_gemm" if isinstance(step, ir.BatchMatmul) else step.helper
            blas_call = helper in ("gemm", "gemv", "batch_gemm")
            uses = () if blas_call else (helper,)
            if helper in GEMM_HELPERS:  # a convolution: conv_gemm, whatever its mode
                # (the program's convolution helpers: one module, PACKED or not, serves
                # every convolution of the program, and conv_gemm compiles once)
                helper, uses = "conv_gemm", convolutions
            name = kernel(_kernel_module(
                (f"kernel = {helper}",), uses, blas_call, False,
                parallel, helper == "batch_gemm", helper == "gemv"))
            for line in se.lines:
                code = line.lstrip()
                test = "if " if code.startswith(f"if {helper}(") else ""
                code = code[len(test):]
                if code.startswith(f"{helper}("):  # the call: of the kernel instead
                    line = line[:len(line) - len(code) - len(test)] + test + name + \
                        code[len(helper):]
                elif code.startswith("conv2d_direct("):  # (compiled only if called)
                    direct = kernel(_kernel_module(("kernel = conv2d_direct",),
                                                   ("conv2d_direct",), False, False, parallel))
                    on_demand.add(int(direct[1:]))
                    line = line[:len(line) - len(code)] + direct + code[len("conv2d_direct"):]
                em.lines.append(_SCALAR_ARG.sub(
                    lambda m: constants.setdefault(m.group(0), f"C{len(constants)}"), line))
            if key is not None and own_named and len(se.lines) == 1 and key not in calls:
                calls[key] = _line_pattern(em.lines[-1], em.depth, own)
        else:  # a reshape: a view, made here
            em.lines += se.lines
    em.lines = head + [_STEPS_HERE]
    # (the driver is Python: an array assignment costs no compile time there)
    _emit_epilogue(em, program, prologue_at, lambda em, state, value, source: em.emit(
        f"{state.name}[...] = {source}"))
    args += [f"recycled{k}" for k in recycled] + ["workspace"]
    at = em.lines.index(_STEPS_HERE)
    functions, em.lines[at:at + 1] = _fold_repeats(steps, args, em.lines)
    names = [loader.module_name(source) for source in kernels]
    driver = [
        f"# Generated by graphnn ({GENERATOR_VERSION} library driver, numba "
        f"{numba.__version__}). Do not edit: regenerated from the graph.",
        "# A plain-Python driver: each step calls a kernel of the library (K<k>, bound by",
        "# kernels.cpu.bind_library to the `kernel` of the modules KERNELS names).",
        "import numpy as np", "",
        f"KERNELS = {tuple(names)!r}",
        "# kernels a first call may not call (a convolution computed again only when an",
        "# output was not finite): left out of the compile progress and counts",
        f"ON_DEMAND = {tuple(sorted(on_demand))!r}",
        "".join(f"K{k} = " for k in range(len(kernels))) + "None" if kernels else "", "",
        "# outputs whose earlier results the caller may pass back (see kernels/cpu.py)",
        f"RECYCLED = {tuple(recycled)!r}", "",
        "# the kernels' constant arguments (typed, made once)"]
    driver += [f"{name} = {value}" for value, name in constants.items()]
    driver += ["", ""] + _memory_functions(program, em, recycled) + [""]
    driver += functions + [f"def program({', '.join(args)}):"] + em.lines
    return "\n".join(driver) + "\n", kernels


# The driver of a deep graph repeats a few runs of steps hundreds of times (a residual
# block's forward steps, its gradient's, its update's), and compiling 11,000 lines of Python
# took 0.3-0.6 s, as long as all the kernels. A run of steps whose lines are the same but
# for the names of their local variables becomes a function, `_steps<k>`, that the driver
# calls once per repeat with its own variables (see _fold_repeats).
FOLD_STEPS = 32    # steps per call of a folded run, at least (fewer calls, each ~1 µs)
FOLD_REPEATS = 4   # calls in a row, at least: smaller programs keep every line
FOLD_PERIOD = 96   # the longest run of distinct steps a repeat is looked for in
_STEPS_HERE = "\0steps"  # where the steps go in the driver's lines, until they are folded
# the driver's local variables: buffers (b<n>_<label>, in<k>, st<k>, c<k>, their flat
# views <name>_f), dims d<k>, workspace offsets _w<k>, _wend and rooms _room<k>, wide sums,
# recycled and copied outputs, the convolution scratch; _fold_repeats checks that it names
# them all
_LOCAL_FORMS = (r"b\d+_\w+", *(rf"{prefix}\d+(?:_f)?" for prefix in (
    "in", "st", "c", "d", "_w", "_room", "wide", "recycled", "out", "new")),
    "_wend", "workspace", r"conv_scratch(?:_f)?")
# (each form's first character comes first, then the check that no name character or dot
# precedes it: a pattern whose branches each begin with a character lets the regex engine
# skip to where one of those occurs, twice as fast over the megabyte of a deep graph's
# driver text as one that begins with the check)
_LOCAL = re.compile("(?:" + "|".join(rf"{form[0]}(?<![.\w]{form[0]}){form[1:]}"
                                     for form in _LOCAL_FORMS) + r")(?!\w)")
# any number of local variables, each on a line of its own
_LOCAL_LINES = re.compile(rf"(?:{_LOCAL.pattern}\n)*")
_ASSIGNED = re.compile(r"\s*([A-Za-z_]\w*) (\+?=) ")
_ASSIGNED_LINE = re.compile(r"\n[ \t]*([A-Za-z_]\w*) \+?= ")
_LOCAL_SPLIT = re.compile(f"({_LOCAL.pattern})")
# lines a folded run may not hold: blocks (if, for ...), strings, comments after code,
# anything returned, assignments other than `name = ...` and `name += ...` to a name (a
# tuple, `-=`, `:=`: _reads_and_writes would not see what they assign). The patterns look
# at a step's skeleton (its code, each line after a newline, each local variable replaced
# by "\1"), once per skeleton: a name at the start of a line is a variable or another name.
_UNFOLDABLE = re.compile(
    r"""['"#]|:[ \t]*(?:\n|\Z)|:="""
    r"|\n[ \t]*(?:if|for|while|return|raise|def|with|try|else|elif|del"
    r"|global|nonlocal|lambda|async|await|yield)\b"
    r"|\n[ \t]*(?:[A-Za-z_]\w*|\x01)[ \t]*(?:,|(?:[-*/%&|^@]|\*\*|//|<<|>>)=)")
_COMMENT_LINE = re.compile(r"\n[ \t]*#[^\n]*")


def _fold_repeats(steps, args, body):
    """(module-level functions, the program's lines for `steps`): each step's driver
    lines, in order, with every run of at least FOLD_REPEATS repeats of the same lines (up
    to the names of local variables: the same text once each is replaced by its place in
    the order the run first names them) folded into calls of one function per run shape,
    each call taking at least FOLD_STEPS steps. A call passes the variables the run reads
    before it assigns them and rebinds those it assigns that are read after it, so the
    program computes exactly what the lines did; each step's comments stay in the program,
    before its call. `args` and `body` (the program's other lines, _STEPS_HERE where the
    steps go) are read for the local variables: when one is not of a form _LOCAL knows,
    nothing is folded."""
    if len(steps) < FOLD_STEPS * FOLD_REPEATS:
        return [], [line for lines in steps for line in lines]
    # (each pattern runs once over the text of every step, steps apart by lines "\0": a
    # deep graph has 11,000 steps; each line follows a newline, which the patterns find)
    text = "\n" + "\n\0\n".join("\n".join(lines) for lines in steps) + "\n"
    code = _COMMENT_LINE.sub("", text)
    at = body.index(_STEPS_HERE)
    before, after = "\n" + "\n".join(body[:at]), "\n" + "\n".join(body[at + 1:])
    local = set(args).union(*(_ASSIGNED_LINE.findall(t) for t in (before, code, after)))
    if not _LOCAL_LINES.fullmatch("".join(f"{name}\n" for name in local)):
        return [], [line for lines in steps for line in lines]
    parts = _LOCAL_SPLIT.split(code)  # text, variable, text, variable, ..., text
    skeletons = "\1".join(parts[0::2]).split("\0")
    counts = [skeleton.count("\1") for skeleton in skeletons]
    found = parts[1::2]  # the variables the steps name, in order; step k's from offset[k]
    offset = [0, *itertools.accumulate(counts)]
    # variable -> the last step that names it (len(steps): named after the steps)
    last_use = dict(zip(found, np.repeat(np.arange(len(steps)), counts).tolist()))
    last_use.update(dict.fromkeys(_LOCAL.findall(after), len(steps)))
    ids = {}  # skeleton -> its number: a step's shape
    shapes = [ids.setdefault(skeleton, len(ids)) for skeleton in skeletons]
    # (None: a step that is never folded)
    unfoldable = {ids[skeleton] for skeleton in ids if _UNFOLDABLE.search(skeleton)}
    if unfoldable:
        shapes = [None if shape in unfoldable else shape for shape in shapes]
    where = collections.defaultdict(list)  # shape -> the steps of that shape, in order
    for k, shape in enumerate(shapes):
        if shape is not None:
            where[shape].append(k)
    ends = {}  # see _longest_repeat
    unfolded = [len(shapes)] * (len(shapes) + 1)
    for k in range(len(shapes) - 1, -1, -1):
        unfolded[k] = k if shapes[k] is None else unfolded[k + 1]
    functions, out, made, analysed, number = [], [], {}, {}, 0
    while number < len(steps):
        run, period = _longest_repeat(shapes, number, where, ends, unfolded)
        size = -(-FOLD_STEPS // period) * period  # whole periods, at least FOLD_STEPS steps
        calls, first, live = [], None, set()
        for start in range(number, number + run - size + 1, size):
            used = found[offset[start]:offset[start + size]]
            order = list(dict.fromkeys(used))
            place = {n: j for j, n in enumerate(order)}
            key = (tuple(shapes[start:start + size]), tuple(map(place.__getitem__, used)))
            if first is None:
                first = key
            elif key != first:
                break  # (the names fall another way: a new run starts here)
            if key not in analysed:
                analysed[key] = _reads_and_writes(steps[start:start + size], place)
            live.update(j for j in analysed[key][1]
                        if last_use[order[j]] >= start + size)
            calls.append((start, order))
        if len(calls) < FOLD_REPEATS:
            out += steps[number]
            number += 1
            continue
        reads, writes = analysed[first]
        returned = sorted(live)
        shape = (first, tuple(returned))
        if shape not in made:
            made[shape] = f"_steps{len(made)}"
            functions += _run_function(made[shape], steps[number:number + size], calls[0][1],
                                       reads, returned)
        for start, order in calls:
            block = steps[start:start + size]
            out += [line for lines in block for line in lines
                    if line.lstrip().startswith("#")]
            call = f"{made[shape]}({', '.join(order[j] for j in reads)})"
            targets = "".join(f"{order[j]}, " for j in returned)
            out.append(f"    {targets}= {call}" if returned else f"    {call}")
        number += len(calls) * size
    return functions, out


def _longest_repeat(shapes, start, where=None, ends=None, unfolded=None):
    """(steps covered, period): the longest stretch from `start` in which each step's shape
    is that of the step `period` before it (after the first period), over periods up to
    FOLD_PERIOD, the shortest period among the longest; (1, 1) when none repeats.
    `where` ({shape: the sorted steps of that shape}, None: found here) gives the periods
    worth trying: a stretch of two periods or more has the first step's shape one period
    on (a recurrent layer's chunks of 65 steps are found without trying 64 periods at
    each step). `ends` ({period: (start, end)}, kept by the caller for starts that only
    grow) remembers where each period's stretch ends: a stretch from `start` ends where
    the one from an earlier start did, when it starts a period or more before that end (a
    stretch too short to fold is not walked again from each of its steps). `unfolded[k]`:
    the first step from k on that is never folded (len(shapes) when none)."""
    best, repeating = (1, 1), []
    first = shapes[start] if start < len(shapes) else None
    if first is None:
        return best
    if where is None:
        where = {first: [k for k in range(start, min(len(shapes), start + FOLD_PERIOD + 1))
                         if shapes[k] == first]}
    steps = where[first]
    for at in steps[bisect.bisect_right(steps, start):]:
        period = at - start
        if period > FOLD_PERIOD:
            break
        if (unfolded[start + 1] < at) if unfolded is not None else \
                (None in shapes[start + 1:at]):
            break  # (a step that is never folded, within the first period)
        if any(period % p == 0 for p in repeating):
            continue  # (a multiple of a period that repeats covers about as much)
        known = ends.get(period) if ends is not None else None
        if known is not None and known[0] <= start and start + period <= known[1]:
            end = known[1]
        else:
            end = start + period
            while end < len(shapes) and shapes[end] is not None and \
                    shapes[end] == shapes[end - period]:
                end += 1
            if ends is not None:
                ends[period] = (start, end)
        if end - start >= 2 * period:
            repeating.append(period)
            if end - start > best[0]:
                best = (end - start, period)
    return best


def _reads_and_writes(block, place):
    """(places read before they are assigned, places assigned) of the variables of the
    driver lines `block` (a list of steps' lines), `place` numbering the variables."""
    reads, writes = set(), set()
    for line in (line for lines in block for line in lines):
        if line.lstrip().startswith("#"):
            continue
        m = _ASSIGNED.match(line)
        used = _LOCAL.findall(line[m.end():] if m else line)
        if m and m.group(2) == "+=":
            used.append(m.group(1))
        reads.update(place[n] for n in used if place[n] not in writes)
        if m:
            writes.add(place[m.group(1)])
    return sorted(reads), sorted(writes)


def _run_function(name, block, order, reads, returned):
    """The lines of function `name` that runs the steps `block` (lists of driver lines)
    with their local variables `order` renamed v0, v1, ...: it takes the places `reads`
    and returns the places `returned`."""
    place = {n: j for j, n in enumerate(order)}
    body = [_LOCAL.sub(lambda v: f"v{place[v.group(0)]}", line)
            for lines in block for line in lines if not line.lstrip().startswith("#")]
    back = "".join(f"v{j}, " for j in returned)
    return ([f"def {name}({', '.join(f'v{j}' for j in reads)}):"] + body +
            ([f"    return ({back})"] if returned else []) + ["", ""])


def _loops_key(step, loop):
    """(key, buffers): what the loops `_emit_step` writes for an Elementwise or Reduce
    step depend on, with each buffer named by its place in the list of buffers (the order
    in which the key meets their names). Two steps with one key have the same kernel and
    the same call but for those buffers; the key holds everything else the loops are made
    of (shapes, indices, statements, dtype, reduction axes and kind, the loop)."""
    places, buffers = {}, []

    def ref(buf):
        place = places.get(buf.name)
        if place is None:
            place = places[buf.name] = len(buffers)
            buffers.append(buf)
        return place, tuple(buf.shape), buf.dtype

    def expr_key(expr):
        return (tuple((var, ref(load.buffer), tuple(load.index))
                      for var, load in expr.loads.items()),
                tuple(tuple(s) for s in expr.stmts), expr.result)
    out = ref(step.out)
    if isinstance(step, ir.Elementwise):
        key = ("elementwise", loop, out, expr_key(step.expr), step.placed and (
            tuple(step.placed[0]), step.placed[1], step.placed[2]))
    else:
        key = ("reduce", loop, out, expr_key(step.expr), tuple(step.domain),
               tuple(step.axes), step.kind, step.post and expr_key(step.post))
    return key, buffers


# steps whose kernel is a library function called with the step's buffers
_LIBRARY_CALLS = (ir.Matmul, ir.BatchMatmul, ir.Window)


def _library_call_key(step):
    """(key, buffers) for a Matmul, BatchMatmul or Window step, as `_loops_key` gives them
    for loops: two steps with one key call the same kernel with the same other arguments
    (transposes, alpha and beta, the helper and its integers) but for their buffers, each
    named in the key by its place in `buffers` with its shape and dtype."""
    places, buffers = {}, []
    refs = []
    operands = (step.a, step.b) if not isinstance(step, ir.Window) else step.args
    epilogue = getattr(step, "epilogue", None)
    bias = () if epilogue is None or epilogue[0] is None else (epilogue[0],)
    for buf in (*operands, step.out, *bias):
        place = places.get(buf.name)
        if place is None:
            place = places[buf.name] = len(buffers)
            buffers.append(buf)
        refs.append((place, tuple(buf.shape), buf.dtype))
    if isinstance(step, ir.Window):
        return ("window", step.helper, tuple(step.params), tuple(refs),
                epilogue and epilogue[1:]), buffers
    scalars = (step.alpha, step.beta) if isinstance(step, ir.Matmul) else ()
    return (type(step).__name__, step.trans_a, step.trans_b, scalars, tuple(refs)), buffers


def _line_pattern(line, depth, buffers):
    """The `_call_pattern` of a driver line `name(arg, arg, ...)` (at `depth`) that passes
    each of `buffers` as an argument of its own, or None when the line is not of that form
    (then every step of its key is written out)."""
    indent = "    " * depth
    name, _, rest = line[len(indent):].partition("(")
    if not line.startswith(indent) or not rest.endswith(")") or not name.isidentifier():
        return None
    place = {b.name: k for k, b in enumerate(buffers)}
    pattern = [(place[arg], "") if arg in place else arg for arg in rest[:-1].split(", ")]
    own = [p for p in pattern if isinstance(p, tuple)]
    if len({p for p, _ in own}) != len(buffers) or any(
            b.name in arg for b in buffers for arg in pattern if isinstance(arg, str)):
        return None  # (a buffer that is not an argument of its own)
    if f"{name}({', '.join(_call_arguments(pattern, buffers))})" != line[len(indent):]:
        return None
    return name, pattern, None


def _call_pattern(name, params, arguments, buffers, flat):
    """How a step calls kernel `name` (`_kernel_template`'s parameters and arguments), its
    buffers given by their place in `buffers` (see _loops_key): (name, [text, or (place,
    suffix "" or "_f")], the places of the buffers it reads flat (see _flat_buffers) or
    None), or None when a buffer argument is not one of `buffers`."""
    place = {b.name: k for k, b in enumerate(buffers)}
    pattern = []
    for param, arg in zip(params, arguments):
        if not param.startswith("buf"):
            pattern.append(str(arg))
        elif arg in place:
            pattern.append((place[arg], ""))
        elif arg.endswith("_f") and arg[:-2] in place:
            pattern.append((place[arg[:-2]], "_f"))
        else:
            return None
    return name, pattern, None if flat is None else [place[b.name] for b in flat]


def _call_arguments(pattern, buffers):
    """A `_call_pattern`'s arguments for a step whose buffers are `buffers`."""
    return [p if isinstance(p, str) else buffers[p[0]].name + p[1] for p in pattern]


def bind_library(driver, modules):
    """Point the driver module's K<k> at the k-th kernel module's `kernel`."""
    for k, module in enumerate(modules):
        setattr(driver, f"K{k}", module.kernel)
