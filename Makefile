# The README's two commands: `make demo` and `make test`. Both build the same environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test reliability install proto clean install-service uninstall-service wheelhouse \
	gpu-check-packages gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,export,dev]'
	touch $(STAMP)

install: $(STAMP)

# Exports real all-MiniLM-L6-v2 and a tiny random decoder, serves both over gRPC on loopback.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python demo/demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -q

# The reliability and security suite at full size (fuzzing, broken packages, client faults, 4x
# overload, 2,000-request soak, PII canary); prints a table of its figures. Its quick twins run in `make test`.
reliability: $(STAMP)
	HF_HUB_OFFLINE=1 RELIABILITY_SCALE=full $(BIN)/python -m pytest tests/reliability -m "slow or not slow" -q

# Regenerates the wire stubs from proto/; tests/test_proto_stubs.py fails when they drift.
proto: $(STAMP)
	$(BIN)/python proto/generate.py

# The systemd service (unit, sysusers.d, tmpfiles.d, example config, README); `install` above is the
# venv. Honours DESTDIR, APPLIANCE_BIN (ExecStart's binary), UNITDIR, PURGE=1: see systemd/install.sh.
install-service:
	systemd/install.sh install

uninstall-service:
	systemd/install.sh uninstall

clean:
	rm -rf $(VENV) build *.egg-info

# Air-gapped hosts: every wheel the daemon needs in one folder, installed there with
# `pip install --no-index --find-links DIR 'appliance[EXTRA]'`. EXTRA=cpu|cuda|gpu;
# PYTHON_VERSION=3.12 for another host's Python; WITH_TESTS=1 adds pytest (for gpu-check);
# SPLIT_MB=48 cuts larger wheels into parts for size-limited transports. See offline/wheelhouse.py.
EXTRA ?= cpu
wheelhouse: $(STAMP)
	@test -n "$(WHEELHOUSE)" || { echo "make wheelhouse: set WHEELHOUSE=DIR" >&2; exit 2; }
	$(BIN)/python offline/wheelhouse.py $(WHEELHOUSE) --extra $(EXTRA) \
		$(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) $(if $(WITH_TESTS),--with-tests) \
		$(if $(SPLIT_MB),--split-mb $(SPLIT_MB))

# The small CUDA packages gpu-check uses, exported on a CPU host (a few MB; PACKAGES=DIR).
gpu-check-packages: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python offline/gpu_check.py --make-packages $(or $(PACKAGES),build/gpu-check-packages)

# The GPU host's check (needs only python3 there, plus WHEELHOUSE=DIR where its Python lacks
# onnxruntime-gpu, and PACKAGES=DIR from gpu-check-packages); prints one table; skips with its reason
# on a host without a GPU. See offline/gpu_check.py.
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) offline/gpu_check.py $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) \
		$(if $(PACKAGES),--packages $(PACKAGES))
