# Every target sets up .venv itself (Python 3.11, exact pins) and reinstalls only when
# pyproject.toml or requirements.lock changed.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.speechport-installed
SP := $(VENV)/bin/speechport
MODEL ?= lstm_ctc

.PHONY: setup android ios dsp onnx release test bench acceptance nightly corpus train clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==25.3
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

android: $(STAMP)
	$(SP) build targets/android.yaml

ios: $(STAMP)
	$(SP) build targets/ios.yaml

dsp: $(STAMP)
	$(SP) build targets/dsp.yaml

onnx: $(STAMP)
	$(SP) build targets/onnx.yaml

# one bundle per platform of pipeline/release/platforms.py under artifacts/release/ (directory and .tar.gz)
release: $(STAMP)
	@test -n "$(VERSION)" || { echo "usage: make release VERSION=x.y.z" >&2; exit 2; }
	$(SP) release $(VERSION)

# two worker processes (the machine's cores), each taking whole test modules so a module's shared build runs once;
# the slowest tests are listed at the end
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --durations=25

# cold vs warm builds, then the stock quantization recipe against speechport's for the default targets, in one run
bench: $(STAMP)
	$(VENV)/bin/python -m bench.build_cache
	$(VENV)/bin/python -m bench.quant

# issue 12's acceptance: every zoo and bring-your-own model ships an 8-bit-weight variant on every platform
acceptance: $(STAMP)
	$(VENV)/bin/python -m bench.acceptance

# every zoo target and every bring-your-own example, each built and reported even when an earlier one fails;
# the exit status says if any did
nightly: $(STAMP)
	@failed=""; for t in targets/nightly/*.yaml; do echo "== $$t"; \
	  $(SP) build $$t --out artifacts/nightly/$$(basename $$t .yaml) || failed="$$failed $$t"; done; \
	  for t in examples/byo/*/target.yaml; do echo "== $$t"; \
	  $(SP) build $$t --out artifacts/nightly/byo-$$(basename $$(dirname $$t)) || failed="$$failed $$t"; done; \
	  if [ -n "$$failed" ]; then echo "nightly: failed:$$failed"; exit 1; fi

corpus: $(STAMP)
	$(VENV)/bin/python -m models.corpus.synthesize

train: $(STAMP)
	$(VENV)/bin/python -m models.train $(MODEL)

clean:
	rm -rf artifacts/cache artifacts/android artifacts/ios artifacts/dsp artifacts/onnx artifacts/nightly
