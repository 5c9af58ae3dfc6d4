# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run migrate test lint lock lock-check bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/relay run $(ARGS)

# The release phase from the virtual environment, with the variables of .env when there
# is one (what `honcho run relay migrate` does, without needing .venv/bin on PATH).
migrate: $(STAMP)
	set -a; [ ! -f .env ] || . ./.env; set +a; $(BIN)/relay migrate $(ARGS)

lint: lock-check
	$(BIN)/ruff check relay client_demo tests bench tools examples conftest.py
	$(BIN)/ruff format --check relay client_demo tests bench tools examples conftest.py
	$(BIN)/mypy
	$(BIN)/lint-imports

# requirements.txt (what a Python buildpack installs) from pyproject.toml, the one source of
# truth. Keeps the versions already pinned; `make lock LOCK_ARGS=--upgrade` takes the newest.
LOCK_ARGS ?=
lock: $(STAMP)
	$(BIN)/python tools/lockfile.py write $(LOCK_ARGS)

# Offline and fast: the lock's recorded inputs against pyproject.toml (see tools/lockfile.py).
lock-check: $(STAMP)
	$(BIN)/python tools/lockfile.py check

test: lint
	tools/system-deps
	$(BIN)/pytest -q

# The relay against peers on the same frames, one table (docs/benchmarks.md): about 5 min.
# One part, shorter: make bench BENCH_ARGS="--only fanout" (or --quick).
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# A few minutes of many clients against a relay ingesting at full speed; not part of `test`.
# Short run: make soak SOAK_ARGS="--duration 60". Report in tmp/soak/.
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
