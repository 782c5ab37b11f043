# The README's two commands: `make demo` and `make test`. Both build the same environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test reliability install proto clean install-service uninstall-service

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
