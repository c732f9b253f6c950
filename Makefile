# signfeat: every target sets itself up from nothing (venv, FFmpeg, Python deps) and then runs.
#   make demo   demo corpus -> manifest build -> curate -> extract (tiny random models) -> verify -> stats
#               -> train a tiny adapter + LoRA model and evaluate it, next to the same model with zeroed input
#   make test   the whole test suite, full-size model checks included (`make test-fast` skips those)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(VENV)/bin/pip
DEMO   ?= demo_out
# 320 clips: enough sentences for the demo's training run to beat the same model with its visual input zeroed
DEMO_CLIPS ?= 320
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup ffmpeg demo test test-fast bench clean

setup: ffmpeg $(VENV)/.installed

# torchcodec decodes through the system's FFmpeg libraries; PyAV and decord bring their own.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing FFmpeg (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg >/dev/null; }

$(VENV)/.installed: pyproject.toml constraints.txt $(wildcard */__init__.py)
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1 torchcodec==0.17.0
	$(PIP) install -q -e '.[test]'
	@touch $@

demo: setup
	$(VENV)/bin/signfeat demo-corpus $(DEMO)/corpus --clips $(DEMO_CLIPS)
	$(VENV)/bin/signfeat manifest build --annotations $(DEMO)/corpus/annotations/* $(DEMO)/corpus/PHOENIX-2014-T/annotations/manual/*.corpus.csv \
	  --root $(DEMO)/corpus --out $(DEMO)/manifest.parquet
	$(VENV)/bin/signfeat manifest curate $(DEMO)/manifest.parquet --out $(DEMO)/curated.parquet --report $(DEMO)/report --config configs/curate.yaml
	@echo "NOTE: the demo extraction uses TINY RANDOM-WEIGHT extractors (configs/extract_demo.yaml): the features are not meaningful"
	$(VENV)/bin/signfeat extract --manifest $(DEMO)/curated.parquet --out $(DEMO)/features --config configs/extract_demo.yaml --overwrite
	$(VENV)/bin/signfeat verify $(DEMO)/features
	$(VENV)/bin/signfeat stats $(DEMO)/features
	@echo "NOTE: the demo training uses a TINY RANDOM-INIT LLM (configs/recipes/spamo_tiny.yaml)"
	OMP_NUM_THREADS=1 $(PY) -m trainer.demo --shards $(DEMO)/features --out $(DEMO)/train
	$(VENV)/bin/signfeat eval --checkpoint $(DEMO)/train/real --split test
	@echo "manifest: $(DEMO)/manifest.parquet  curated: $(DEMO)/curated.parquet  report: $(DEMO)/report/  shards: $(DEMO)/features/  training: $(DEMO)/train/"

test: setup
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/probe.py
	$(PY) bench/extractors.py --size tiny
	$(PY) bench/motion.py
	$(PY) bench/train.py
	$(PY) bench/pipeline.py
	$(PY) bench/decode_ranges.py
	$(PY) bench/decode_memory.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
