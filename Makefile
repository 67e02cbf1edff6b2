# make demo: the main job (set up, then show the lecture examples)
# make test: the test suite (set up, then pytest)
# Both create .venv and install graphnn with its dependencies when needed.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
export OPENBLAS_NUM_THREADS ?= 1
export GRAPHNN_CACHE_DIR ?= $(CURDIR)/.graphnn-cache

.PHONY: demo test fuzz bench dot clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# Graphviz's `dot` renders the pictures; without it graphnn writes .dot files instead.
dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; pictures fall back to .dot files"; \
	  else \
	    echo "Graphviz 'dot' is missing. Install it with:  sudo apt-get install graphviz"; \
	    echo "(graphnn goes on and writes .dot files instead of pictures)"; \
	  fi; }

demo: $(STAMP) dot
	$(PY) -m graphnn demo

test: $(STAMP) dot
	$(PY) -m pytest -q

fuzz: $(STAMP)
	GRAPHNN_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests -k fuzz

bench: $(STAMP)
	$(PY) -m graphnn bench

clean:
	rm -rf $(VENV) .graphnn-cache build *.egg-info
