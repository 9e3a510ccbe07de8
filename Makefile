# Two commands for a new user: `make demo` and `make test`. Both install into .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Everything yapf formats (style in .style.yapf: Google style, 2-space indentation).
FORMATTED := trajax tests launch configs bench setup.py

.PHONY: demo test install format check-format bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) launch/study.py --config=configs/toy.py --workdir=demo_out

format: $(STAMP)
	$(PY) -m yapf --in-place --recursive --parallel $(FORMATTED)

check-format: $(STAMP)
	@$(PY) -m yapf --diff --recursive --parallel $(FORMATTED) > .yapf.diff || \
	  { cat .yapf.diff; rm -f .yapf.diff; echo "These files are not formatted: run 'make format'."; exit 1; }
	@rm -f .yapf.diff

test: check-format
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo_out
