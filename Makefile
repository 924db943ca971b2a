# Set-up and entry points. `make demo` and `make test` work on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mtrank-installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

# Keras 2 must be selected before TensorFlow is first imported, in every process.
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup browser demo test clean

setup: $(STAMP)

# Re-installs only when the package definition or the pins change.
$(STAMP): setup.py constraints.txt scripts/find_python310.sh
	@python310=$$(scripts/find_python310.sh) || exit 1; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then \
	  echo "creating $(VENV) with $$python310"; rm -rf $(VENV); "$$python310" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/mtrank demo --work-dir $(DEMO_DIR)

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Headless Chromium for the report's browser test (Debian's package). Installs
# only if missing; where apt-get is unavailable (or not root) it says so and
# the browser tests fail with a message naming this target.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (headless browser for the report test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "warning: could not install chromium; the report browser tests will fail"; \
	else echo "warning: no $(CHROMIUM) and no apt-get as root; the report browser tests will fail"; fi

clean:
	rm -rf $(VENV) $(DEMO_DIR)
