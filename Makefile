# Two commands do everything on a fresh machine:
#   make demo   -- create .venv if missing, then run `ntkit report` on the bundled digits data
#   make test   -- create .venv if missing, then ruff + the whole default test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-gpu lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[scale,test,oracle]" --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ntkit report --out report

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy  # the public API and tests/typing/user_code.py, settings in pyproject.toml
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q  # 2 workers x 1 thread on 2 cores

test-slow: $(STAMP)  # about 14 minutes on 2 cores
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -m slow

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

bench: $(STAMP)  # about 25 minutes on 2 cores; tables go to docs/benchmarks/
	$(BIN)/python benchmarks/fc_kernel.py --write
	$(BIN)/python benchmarks/cnn_kernel.py
	$(BIN)/python benchmarks/empirical_ntk.py --threads 2
	$(BIN)/python benchmarks/predict.py --threads 2
	$(BIN)/python benchmarks/analysis.py --threads 2 --write
	$(BIN)/python benchmarks/sklearn_gp.py --threads 1
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) report .pytest_cache
