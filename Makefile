# SafeTwin front door. Every target that needs Python creates the venv first,
# so `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCENE ?= tabletop_push
RUN ?=
CHECKPOINT ?=
ARGS ?=
PORT ?= sim
INPUT ?=
METHOD ?= rgbd
NAME ?= captured_$(SCENE)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: setup sysdeps testdeps test test-all demo capture train audit deploy bench bench-env bench-filter \
        bench-bus bench-loop bench-train bench-capture bench-safe-explore bench-soak bench-expert lint clean

setup: $(STAMP)

# libusb-1.0-0 is a run-time dependency of open3d's wheel.
sysdeps:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
		echo "installing libusb-1.0-0 (needed by open3d)"; \
		apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Test-only system tools: headless Chromium (audit HTML check) and gcc-avr (e-stop firmware).
testdeps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v avr-gcc >/dev/null || missing="$$missing gcc-avr avr-libc"; \
	if [ -n "$$missing" ]; then echo "installing test tools:$$missing"; \
		apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi

# the JUnit results feed the audit report's table of safety scenarios
test: setup testdeps
	@mkdir -p runs/tests
	$(PY) -m pytest -q --junitxml=runs/tests/junit.xml

test-all: setup
	$(PY) -m pytest -q -m "not hardware"

lint: setup
	$(VENV)/bin/ruff check twin safety train robot_io cli tests benchmarks

# METHOD=rgbd (depth images) or nerfstudio (photos; needs the [nerf] extra and a GPU)
capture: setup
	$(VENV)/bin/safetwin capture --scene $(SCENE) --name $(NAME) $(if $(INPUT),--input $(INPUT)) \
		--method $(if $(filter nerfstudio,$(METHOD)),nerf,$(METHOD)) $(ARGS)

train: setup
	$(VENV)/bin/safetwin train --scene $(SCENE) $(ARGS)

# RUN=runs/train/<id> or runs/deploy/<id>; default: the newest training run
audit: setup
	$(VENV)/bin/safetwin audit --run-dir $(or $(RUN),latest) $(ARGS)

# CHECKPOINT=runs/train/<id>/checkpoints/policy.safetensors; default: the newest training run's
deploy: setup
	$(VENV)/bin/safetwin deploy --port $(PORT) --checkpoint $(or $(CHECKPOINT),latest) $(ARGS)

demo: setup
	$(VENV)/bin/safetwin demo --scene $(SCENE) $(ARGS)

bench: bench-env bench-expert bench-filter bench-bus bench-loop bench-capture bench-train bench-safe-explore bench-soak

bench-env: setup
	$(PY) benchmarks/bench_env.py

bench-expert: setup
	$(PY) benchmarks/bench_expert.py

bench-filter: setup
	$(PY) benchmarks/bench_filter.py

bench-bus: setup
	$(PY) benchmarks/bench_bus.py

bench-loop: setup
	$(PY) benchmarks/bench_loop.py

bench-capture: setup
	$(PY) benchmarks/bench_capture.py

bench-train: setup  ## ARGS="--scenes tabletop_push --steps 30000" etc. (see benchmarks/bench_train.py)
	$(PY) benchmarks/bench_train.py $(ARGS)

bench-safe-explore: setup
	$(PY) benchmarks/bench_safe_explore.py

bench-soak: setup  ## D6 soak of the deploy stack; ARGS="--minutes 480" for the 8 h run
	$(PY) benchmarks/bench_soak.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
