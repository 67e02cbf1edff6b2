"""The kernel IR: buffers and a short list of primitive steps. It knows nothing of graphs,
nodes or gradients; graphnn lowers a graph into a `Program`, and each backend turns the
program's steps into code.

Shapes are tuples whose entries are ints or dim-variable names (strings such as "d0") bound
from the input arrays at run time. Scalar expressions are Python expression strings over
loop-local variables, using only arithmetic, comparisons, conditional expressions and the
functions exp, log, log1p, sqrt, tanh, erf, abs, max, min, and random_bits (counter-based
random bits, kernels/random.py); `T(...)` converts to the step's dtype.
The loop indices i0, i1, ... (one per axis of the step's loop nest: the output's axes for an
elementwise step, the domain's for a reduction) are loop-local integers too.
Both the CPU (numba.njit) and the GPU (numba.cuda) generators accept that language.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

Dim = Union[int, str]


@dataclass(eq=False)
class Buffer:
    name: str
    shape: Tuple[Dim, ...]
    dtype: str
    role: str = "temp"        # input | state | const | temp | view
    arg_index: int = -1       # position among the role's arguments (input/state/const)
    base: Optional["Buffer"] = None  # for views: the buffer whose memory this one shares

    @property
    def ndim(self):
        return len(self.shape)


@dataclass
class Load:
    """Read `buffer` at `index` (one expression per buffer axis over the loop variables)."""
    buffer: Buffer
    index: Tuple[str, ...]


@dataclass
class ScalarExpr:
    """Statements `var = expression`, in order; `loads` bind variables to buffer reads."""
    loads: dict                       # var -> Load
    stmts: List[Tuple[str, str]]      # (var, expression)
    result: str


@dataclass
class Elementwise:
    """out[i0, ..., ik] = expr, over out's shape (i0.. are the loop variables).

    With `placed` = (shape, axis, start), the loops run over `shape` instead, and the
    result at (i0, ..., ik) goes to out at i_axis + start along `axis`: the step writes its
    part of a concatenation straight into the concatenated buffer (a CPU back end's
    rewrite, kernels/cpu.py place_in_concat)."""
    out: Buffer
    expr: ScalarExpr
    comment: str = ""
    inplace_of: Optional[Buffer] = None
    placed: Optional[Tuple[Tuple[Dim, ...], int, Dim]] = None


@dataclass
class Reduce:
    """out = reduce(kind, expr over `domain`, axes) with out shaped keepdims=False over axes.
    With `post`, each result is finished as it is stored: out = post, an expression over
    `acc` (the reduction) and loads at the output's index (the loop variables of the
    domain's kept axes, e.g. i1 when axis 0 is reduced)."""
    out: Buffer
    expr: ScalarExpr
    domain: Tuple[Dim, ...]
    axes: Tuple[int, ...]
    kind: str                          # sum | max
    comment: str = ""
    post: Optional[ScalarExpr] = None


@dataclass
class ArgmaxMask:
    """out = 1 at the first maximal element of src over `axes` (row-major), 0 elsewhere."""
    out: Buffer
    src: Buffer
    axes: Tuple[int, ...]
    comment: str = ""


@dataclass
class Matmul:
    """out = alpha * op(a) @ op(b) + beta * out, where op transposes when asked (2-D, via
    BLAS). With beta = 0 (the default) out's old contents are not read."""
    out: Buffer
    a: Buffer
    b: Buffer
    trans_a: bool = False
    trans_b: bool = False
    comment: str = ""
    alpha: float = 1.0
    beta: float = 0.0


@dataclass
class BatchMatmul:
    """out[i] = sum over the summed positions of op(a[i_a]) @ op(b[i_b]), for every index i
    of out's leading (batch) axes; op transposes a matrix when asked (BLAS gemm per matrix).

    a, b and out have one rank (>= 3). Along each batch axis the full size is the larger of
    a's and b's; an operand whose dim is 1 there is read at index 0 for every index
    (NumPy broadcasting), and where out's dim is 1 but the full size is not, the products
    along that axis are summed (a gradient summed over broadcast dims)."""
    out: Buffer
    a: Buffer
    b: Buffer
    trans_a: bool = False
    trans_b: bool = False
    comment: str = ""


@dataclass
class Window:
    """A convolution or pooling window op done by a named helper kernel."""
    out: Buffer
    helper: str                        # conv2d | conv2d_grad_input | ... (see kernels.windows)
    args: List[Buffer]
    params: Tuple[int, ...]            # stride, pads, sizes...
    comment: str = ""
    # a forward convolution's epilogue (kernels/windows.py conv_gemm): (bias buffer or
    # None, act: 0 none or 1 relu, channels computed, first channel in out) - out may be
    # a concatenation whose channels off .. off + cout this convolution writes (conv_gemm
    # takes act + 2 when there is a bias)
    epilogue: Optional[Tuple[Optional[Buffer], int, int, int]] = None


@dataclass
class Reshape:
    """out is a view of src with another shape (same elements, C order)."""
    out: Buffer
    src: Buffer
    comment: str = ""


@dataclass
class Place:
    """out = zeros, then each (src, axis, start) copied into out along axis from start."""
    out: Buffer
    parts: List[Tuple[Buffer, int, int]]
    zero_fill: bool
    comment: str = ""


@dataclass(eq=False)
class HostCall:
    """out = call(*args), computed by a Python function of the compiled program (a
    `gn.repeat` loop, which calls a block's own compiled function once per repeat). The
    back end that runs it passes the function as constant `fn` (set before code is
    generated); back ends whose programs are not Python refuse it."""
    out: Buffer
    call: object                       # (out array, *argument arrays) -> None
    args: List[Buffer]
    comment: str = ""
    fn: Optional[Buffer] = None


@dataclass
class Program:
    inputs: List[Buffer]
    states: List[Buffer]
    consts: List[Buffer]
    steps: list
    outputs: List[Buffer]
    updates: List[Tuple[Buffer, Buffer]]      # (state buffer, new value buffer)
    dims: dict = field(default_factory=dict)  # dim name -> (input index, axis)
    # (input index, n): every value of that integer input must lie in [0, n) (labels that
    # index classes); a back end that runs without the caller's checks tests it first
    index_checks: list = field(default_factory=list)


def step_reads(step):
    """The buffers a step reads."""
    reads = _READS.get(type(step))  # (looked up by class: every pass asks for every step)
    if reads is None:  # (a subclass)
        reads = next((r for kind, r in _READS.items() if isinstance(step, kind)), _reads_nothing)
    return reads(step)


def _loads_read(step):
    return [load.buffer for load in step.expr.loads.values()]


def _reduce_reads(step):
    if step.post is None:
        return [load.buffer for load in step.expr.loads.values()]
    return [load.buffer for e in (step.expr, step.post) for load in e.loads.values()]


def _window_reads(step):
    bias = step.epilogue and step.epilogue[0]
    return list(step.args) + ([bias] if bias is not None else [])


def _reads_nothing(step):
    return []


# step_reads of each step class
_READS = {Elementwise: _loads_read, Reduce: _reduce_reads,
          ArgmaxMask: lambda step: [step.src],
          # (beta != 0: the old contents of out are read too)
          Matmul: lambda step: [step.a, step.b] + ([step.out] if step.beta else []),
          BatchMatmul: lambda step: [step.a, step.b], Window: _window_reads,
          Reshape: lambda step: [step.src], Place: lambda step: [part[0] for part in step.parts],
          HostCall: lambda step: list(step.args)}
