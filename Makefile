# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medtl-installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test setup sample-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

sample_data/labels.csv: $(STAMP) scripts/make_sample_data.py medtl/data/synthetic.py
	$(BIN)/python scripts/make_sample_data.py --out sample_data

sample-data: sample_data/labels.csv

demo: setup sample-data
	$(BIN)/medtl inspect sample_data/labels.csv

test: setup
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf .medtl-cache runs sample_data test-artifacts
