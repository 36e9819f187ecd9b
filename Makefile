# Two commands set everything up on a machine with only python3: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.synced

.PHONY: demo test lint bench venv clean

$(UV):
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv

# After the install, the engine's numba kernels are compiled once into numba's disk cache (~5 s),
# so that the first fits in parallel processes (Dask workers, tests) load them instead of each
# compiling them at once.
$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --python $(PY)
	$(PY) -c "from distnmf import kernels; kernels.load_compiled()"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distnmf demo

test: $(STAMP) lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# ruff and mypy on distnmf/ and api/ (rules and settings: pyproject.toml), no module skipped.
# mypy names modules after folders, so it reads api/ through a link named distnmf_api, the name
# the service is installed and imported under.
lint: $(STAMP)
	$(VENV)/bin/ruff check distnmf api
	@mkdir -p .mypy_cache/src && ln -sfn ../../api .mypy_cache/src/distnmf_api
	$(VENV)/bin/mypy distnmf .mypy_cache/src/distnmf_api

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache demo-output
