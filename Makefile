# open_forgetting: one bootstrap, two entry points (see README).
#   make demo   set up .venv and run the study on the embedded miniature world
#   make test   set up .venv and run every notebook test and pytest test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPROC ?= 2

.PHONY: venv demo test test-fast check-sync lib clean-venv bench

venv: $(STAMP)

# Re-installs only when the requirements or the pins change (idempotent, seconds when nothing did).
$(STAMP): settings.ini setup.py constraints.txt tools/bootstrap.sh
	bash tools/bootstrap.sh $(VENV)
	@touch $(STAMP)

lib: venv  ## export notebooks -> open_forgetting/ and strip notebook outputs
	$(VENV)/bin/nbdev_export && $(VENV)/bin/nbdev_clean

check-sync: venv  ## fail when notebooks and library are out of sync, or notebooks carry outputs
	$(PY) tools/check_sync.py

test: venv check-sync  ## the whole test suite: notebook tests + pytest (one thread per worker: 2 workers on 2 cores)
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers $(NPROC) --do_print --timing
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(NPROC) -q tests

demo: venv  ## the main job: the full study on the embedded miniature world
	$(VENV)/bin/open-forgetting demo

bench: venv
	$(PY) benchmarks/classifier.py; $(PY) benchmarks/train.py; $(PY) benchmarks/metrics.py; $(PY) benchmarks/hypermod.py

clean-venv:
	rm -rf $(VENV)
