# Two commands for a new user: `make demo` and `make test`. Both install into .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers of `make test`; each test file runs on one worker (its module fixtures
# are built once, its tests run in file order).
TEST_WORKERS ?= 2
# Everything yapf formats (style in .style.yapf: Google style, 2-space indentation).
FORMATTED := trajax tests launch configs bench setup.py

.PHONY: demo test install format check-format chromium bench clean

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

# tests/test_report.py renders the report in headless Chromium (/usr/bin/chromium). As root with
# apt-get, it is installed when missing; otherwise that test fails and says how to install it.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (tests/test_report.py renders the report in it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "/usr/bin/chromium is missing: tests/test_report.py will fail; install it with 'sudo apt-get install -y chromium'"; \
	  fi; }

test: check-format chromium
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) demo_out
