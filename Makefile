# Everything sets itself up: a fresh clone needs only `make test` or `make demo`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install test demo bench bench-trained bench-rerank clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from the CPU build on local disk, so no dependency can pull another build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/vitrine demo

bench: $(STAMP)
	$(PY) benchmarks/foundation.py

bench-trained: $(STAMP)
	$(PY) benchmarks/trained_embeddings.py

bench-rerank: $(STAMP)
	$(PY) benchmarks/reranking.py --json .vitrine/bench-rerank.json

clean:
	rm -rf .vitrine .pytest_cache build src/*.egg-info
