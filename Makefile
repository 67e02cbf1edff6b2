# make demo: the main job (set up, then show the lecture examples)
# make test: the test suite (set up, then pytest)
# make gpu-check: on a machine with a CUDA GPU, the GPU tier and one timing table
# Both create .venv and install graphnn with its dependencies when needed.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
export OPENBLAS_NUM_THREADS ?= 1
export GRAPHNN_CACHE_DIR ?= $(CURDIR)/.graphnn-cache
# make test's pytest workers (pytest-xdist): one per core; TEST_JOBS=0 runs in one process
TEST_JOBS ?= auto

.PHONY: demo test fuzz mutate bench dot mpi browser gpu-check clean

# In CI (CI=true) a tier whose tools cannot be installed is a failure, not a skip.
CI_FAIL := case "$$CI" in true|1|yes) echo "CI: this tier must run"; exit 1;; esac

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,onnx]"
	@touch $(STAMP)

# Graphviz's `dot` renders the pictures; without it graphnn writes .dot files instead.
dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || { echo "warning: could not install graphviz; pictures fall back to .dot files"; $(CI_FAIL); }; \
	  else \
	    echo "Graphviz 'dot' is missing. Install it with:  sudo apt-get install graphviz"; \
	    echo "(graphnn goes on and writes .dot files instead of pictures)"; \
	  fi; }

# OpenMPI and mpi4py (extra [mpi]) run the 2-rank tests of gn.distributed; without them
# those tests skip and say why.
mpi: $(STAMP)
	@command -v mpirun >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null) \
	      || { echo "warning: could not install OpenMPI; the MPI tests will skip"; $(CI_FAIL); }; \
	  else \
	    echo "OpenMPI is missing. Install it with:  sudo apt-get install openmpi-bin libopenmpi-dev"; \
	  fi; }
	@$(PY) -c "import mpi4py" 2>/dev/null || $(PY) -m pip install -q -e ".[mpi]" \
	  || { echo "warning: could not install mpi4py; the MPI tests will skip"; $(CI_FAIL); }

# Chromium and Playwright (extra [browser]) run the HTML viewer's browser test; without them
# it skips and says why. Playwright drives Debian's chromium: no browser download.
browser: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will skip"; \
	  else \
	    echo "Chromium is missing. Install it with:  sudo apt-get install chromium"; \
	  fi; }
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q -e ".[browser]" \
	  || echo "warning: could not install playwright; the browser test will skip"

demo: $(STAMP) dot
	$(PY) -m graphnn demo

test: $(STAMP) dot mpi browser
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

fuzz: $(STAMP)
	GRAPHNN_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q -n $(TEST_JOBS) tests -k fuzz

# The mutation score of the core modules (docs/TESTING.md, "Mutation score"): 40 mutants
# per module drawn with a fixed seed, each run against its module's focused tests in a
# private copy of the repository (its own kernel cache); about an hour on 2 shared cores.
mutate: $(STAMP)
	@mkdir -p out
	nice -n 10 $(PY) -m graphnn.tools.mutate --per-module 40 --seed 24 --budget-minutes 100 \
	  --json out/mutate.json --write docs/TESTING.md

# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where a machine sets them for older OpenBLAS builds,
# force slower kernels on numpy's current one: the benchmark lets OpenBLAS choose (its
# environment line names the kernels it runs).
bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m graphnn bench

# The GPU tier, on a machine with a CUDA GPU (under 10 minutes): tests/conftest.py turns the
# CUDA simulator on only when NUMBA_ENABLE_CUDASIM is unset, so =0 reaches the real GPU.
# Runs the tests marked gpu, then one table per workload (ms per step from CUDA events with
# device-resident feeds, launches per step, the on-paper roofline, the slowest kernels),
# then the bench's eager / cpu / cuda comparison.
gpu-check: $(STAMP)
	@NUMBA_ENABLE_CUDASIM=0 $(PY) -c "from numba import cuda; raise SystemExit(0 if cuda.is_available() else 'gpu-check needs a CUDA GPU (numba.cuda.is_available() is False)')"
	NUMBA_ENABLE_CUDASIM=0 $(PY) -m pytest -q -m gpu tests/kernels
	NUMBA_ENABLE_CUDASIM=0 $(PY) -m graphnn.tools.gpu_check --steps 50
	NUMBA_ENABLE_CUDASIM=0 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m graphnn bench \
	  --modes eager,cpu,cuda --workloads mlp-medium,cnn-mnist,eltwise --quick

clean:
	rm -rf $(VENV) .graphnn-cache build *.egg-info
