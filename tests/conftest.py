"""Test set-up: the CUDA simulator (no GPU here), one BLAS thread, a fixed kernel cache."""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("GRAPHNN_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), ".graphnn-cache"))
