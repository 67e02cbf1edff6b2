"""The GPU back end (backend="cuda"): generated numba.cuda kernels for the whole program."""
from .compile import CompiledFunction
from .errors import BackendError


class CudaFunction(CompiledFunction):
    backend = "cuda"

    def __init__(self, outputs, updates=None, check_finite=False, **options):
        raise BackendError("backend='cuda' is not available yet in this version of graphnn; "
                           "use backend='cpu' or backend='numpy'")
