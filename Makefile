# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medtl-installed
DEMO_RUN ?= runs/demo/cv

export TF_CPP_MIN_LOG_LEVEL ?= 2
# pytest processes for `make test`. Each test file runs whole in one of them (module fixtures
# train once). Two suit a 2-core machine: more would only compete for the cores.
TEST_WORKERS ?= 2

.PHONY: demo test setup browser sample-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,export,dicom,mlflow]'
	touch $(STAMP)

setup: $(STAMP)

# The report test opens the HTML report in headless Chromium (Debian's package). Installed
# when we can (root with apt-get); otherwise that test skips with a message.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed; the browser test will skip"; \
	  else echo "chromium not installed (needs root and apt-get); the browser test will skip"; fi; }

sample_data/labels.csv: $(STAMP) scripts/make_sample_data.py medtl/data/synthetic.py
	$(BIN)/python scripts/make_sample_data.py --out sample_data

sample-data: sample_data/labels.csv

demo: setup sample-data
	$(BIN)/medtl inspect sample_data/labels.csv
	$(BIN)/medtl cv configs/demo.yaml --run $(DEMO_RUN)
	$(BIN)/medtl report $(DEMO_RUN) --out $(DEMO_RUN)/report.html
	@echo "demo report: $(DEMO_RUN)/report.html"

test: setup browser
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf .medtl-cache runs sample_data test-artifacts
