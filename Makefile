# Two commands for a new machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck unit bench soak system-deps install clean

# Debian packages the tests and the demo start as real peers: a Mosquitto broker, socat for
# serial pseudo-terminals.
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ] || ! command -v socat >/dev/null 2>&1; then \
		echo "Installing mosquitto and socat with apt-get..."; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto socat >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: system-deps $(STAMP)

demo: install
	$(BIN)/shopfloor demo

lint: $(STAMP)
	$(BIN)/ruff check agent drivers inference tests bench tools
	$(BIN)/ruff format --check agent drivers inference tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/config_cases

test: install lint typecheck
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench.modbus_500 --check --duration 90 --rounds 3
	$(BIN)/python -m bench.modbus_planner --check --duration 60
	$(BIN)/python -m bench.opcua_subscribe --check --duration 60 --rounds 2
	$(BIN)/python -m bench.outbox_io --check --duration 30
	$(BIN)/python -m bench.drain --check --rounds 3
	$(BIN)/python -m bench.station --check --reference pipeline

# The 30-minute soak at 1,000 samples/s (RSS growth, every sample delivered); not in `bench`.
soak: install
	$(BIN)/python -m bench.soak --check --duration 1800

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
