# Everything sets itself up: a fresh clone needs only `make test` or `make demo`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install test browser demo bench bench-trained bench-rerank bench-service bench-scale bench-prototype bench-govern clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from the CPU build on local disk, so no dependency can pull another build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# The browser test drives Debian's Chromium (Playwright cannot download its own here): install it once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# Builds the Grocery store in .vitrine/grocery if missing (trained towers), then serves it and prints the URL.
demo: $(STAMP)
	$(VENV)/bin/vitrine demo

bench: $(STAMP)
	$(PY) benchmarks/foundation.py

bench-trained: $(STAMP)
	$(PY) benchmarks/trained_embeddings.py

# Prototype-ID embedding (issue 4): Grocery and Shopee stage by stage, and the head at U = 10^6.
bench-prototype: $(STAMP)
	@mkdir -p .vitrine
	$(PY) benchmarks/prototype_embeddings.py --json .vitrine/bench-prototype.json

bench-service: $(STAMP)
	@mkdir -p .vitrine
	$(PY) benchmarks/service_load.py --json .vitrine/bench-service.json

# --nproc 1 vs --nproc 2 training throughput on synthetic Grocery-shaped features (a few minutes).
.PHONY: bench-ddp
bench-ddp: $(STAMP)
	$(PY) benchmarks/ddp_throughput.py

bench-rerank: $(STAMP)
	$(PY) benchmarks/reranking.py --json .vitrine/bench-rerank.json

# 10^6 x 256 vectors fitted to the trained Shopee embeddings (needs the store bench-trained builds).
# Every section in one run; in pieces: benchmarks/scale.py --only hnsw (see its --help for the sections).
bench-scale: $(STAMP)
	@mkdir -p .vitrine
	OMP_NUM_THREADS=2 $(PY) benchmarks/scale.py --source-store .vitrine/bench/shopee --json .vitrine/bench-scale.json

# Raw vs sieved vs juiced training data (Grocery both protocols, CrowdFlower), governance throughput
# local vs Ray, query-side juicing latency. Seeds its feature caches from make bench-trained's, if present.
bench-govern: $(STAMP)
	@mkdir -p .vitrine
	$(PY) benchmarks/governance.py --json .vitrine/bench-govern.json

clean:
	rm -rf .vitrine .pytest_cache build src/*.egg-info
