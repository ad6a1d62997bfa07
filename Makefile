# open_forgetting: one bootstrap, two entry points (see README).
#   make demo   set up .venv and run the study on the embedded miniature world
#   make test   set up .venv and run every notebook test and pytest test (the default, fast suite)
#   make test-slow  the opt-in slow tests (pytest -m slow and the notebooks the fast suite leaves to pytest)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPROC ?= 2

.PHONY: venv demo test test-slow check-sync lib clean-venv bench

venv: $(STAMP)

# Re-installs only when the requirements or the pins change (idempotent, seconds when nothing did).
$(STAMP): settings.ini setup.py constraints.txt tools/bootstrap.sh
	bash tools/bootstrap.sh $(VENV)
	@touch $(STAMP)

lib: venv  ## export notebooks -> open_forgetting/ and strip notebook outputs
	$(VENV)/bin/nbdev_export && $(VENV)/bin/nbdev_clean

check-sync: venv  ## fail when notebooks and library are out of sync, or notebooks carry outputs
	$(PY) tools/check_sync.py

# experiments/report.ipynb with no run folder builds a smoke run itself (minutes): tests/test_study_e2e.py executes it
# on the run the CLI wrote and checks its numbers, so the fast suite does not run it a second time here.
NB_SKIP := ^([_.]|report\.ipynb$$)

# pytest's worksteal scheduler: an idle worker takes tests queued for the other (with the default `load` one worker
# sat idle for half the run).
test: venv check-sync  ## the fast test suite: notebook tests + pytest (one thread per worker: 2 workers on 2 cores)
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers $(NPROC) --do_print --timing --skip_file_re '$(NB_SKIP)'
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(NPROC) --dist worksteal -q --durations=15 tests

# tests/test_rehearsal.py (full-size Stable Diffusion, 30-60 min, 20 GB) is not part of it: run it by name.
test-slow: venv  ## the opt-in slow tests: pytest's `slow` marker and the report notebook's own smoke run
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers 1 --do_print --timing --path nbs/experiments/report.ipynb
	OPEN_FORGETTING_SLOW=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n $(NPROC) --dist worksteal -q -m slow --ignore tests/test_rehearsal.py tests

demo: venv  ## the main job: the full study on the embedded miniature world
	$(VENV)/bin/open-forgetting demo

bench: venv
	$(PY) benchmarks/classifier.py; $(PY) benchmarks/train.py; $(PY) benchmarks/metrics.py; $(PY) benchmarks/hypermod.py

clean-venv:
	rm -rf $(VENV)
