# make demo: set up .venv and run the server and two clients end to end.
# make test: set up .venv and run the tests on two pytest-xdist workers, each taking the next
# test as it frees up (worksteal), so the long process tests do not queue behind one worker:
# about 3.5 min on a 2-core machine, a deployed Flower run the longest test. (CI runs `make test` too.)

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint

demo: $(VENV)/.installed
	$(PY) demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist worksteal

bench: $(VENV)/.installed
	$(PY) benchmark.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Reinstalled whenever a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@
