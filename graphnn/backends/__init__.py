"""The back ends, side by side, and `gn.compile`, which picks one by name.

    base.py    what every back end shares: CompiledFunction (graph, updates, feeds, state,
               check_finite, stats) and LoweredFunction (passes + lowering to kernel IR)
    numpy.py   "numpy": interpret the graph node by node (the reference)
    cpu.py     "cpu":   one generated Numba function per step (kernels/cpu.py)
    cuda.py    "cuda":  generated numba.cuda kernels, parameters on the device (kernels/cuda.py)

A back end's module is imported when it is first asked for (numba.cuda costs time).
"""
import importlib
import inspect

from ..errors import BackendError, GraphError, user_location
from ..node import collector_paused

# backend name -> (module in this package, class)
BACKENDS = {
    "numpy": ("numpy", "NumpyFunction"),
    "cpu": ("cpu", "CpuFunction"),
    "cuda": ("cuda", "CudaFunction"),
}


def backend_class(name):
    """The CompiledFunction subclass of back end `name` ("numpy", "cpu" or "cuda")."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} "
                           f"(at {user_location()})")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def compile(outputs, updates=None, backend="cpu", check_finite=False, **options):  # noqa: A001
    """Compile `outputs` (a node or list of nodes) into a function of the graph's inputs.

        f = gn.compile([loss, gW], backend="cpu")
        loss_val, gW_val = f(x=X, y=Y)

    `updates={param: new_value_node}` are applied in place after each call.
    `check_finite=True` raises gn.NumericalError naming the first node that produces NaN/Inf.
    Back-end options: "cpu" `parallel`, `optimize_graph`, `library` (None: by the number
    of steps; True: shared kernels and a Python driver; False: one fused function),
    `progress` (a compile progress bar on stderr; GRAPHNN_QUIET=1 also silences it),
    `conv_code` (more modes for its library's conv_gemm module to serve, names of
    kernels.cpu.CONV_CODE: gn.repeat gives a block and its gradient one module);
    "cuda" `block`, `tile`, `thread_tile`, `outputs_on` ("host" or "device": outputs as
    device arrays), `sync_params`, `generate_only`, `optimize_graph` (cuda feeds may be
    device arrays, used without a copy).
    "cpu" and "cuda" also take `passes={name: False, ...}`, which switches single
    optimisations off (the results must not change; for tests and for bisecting a bug):
    "constant_folding", "simplification", "cse", "fusion", "update_in_place",
    "memory_planning", and on "cpu" "output_recycling", "packed_kernels",
    "concat_in_place" and "conv_epilogues" (graphnn.passes.OPTIONAL_PASSES says what
    each does); an unknown name is a gn.OptionError listing the valid ones:

        f = gn.compile(loss, backend="cpu", passes={"fusion": False, "memory_planning": False})
    """
    cls = backend_class(backend)
    accepted = [p for p in inspect.signature(cls.__init__).parameters
                if p not in ("self", "outputs", "updates", "check_finite")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise GraphError(f"gn.compile: unknown option {unknown[0]!r} for backend "
                         f"{backend!r}; its options are {', '.join(accepted) or 'none'} "
                         f"(at {user_location()})")
    with collector_paused():  # (a large graph: see node.collector_paused)
        return cls(outputs, updates, check_finite=check_finite, **options)
