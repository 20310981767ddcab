# Every target sets up .venv itself (created, or refreshed when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo
XRAY_SAMPLES ?= ../shared/data/xray

.PHONY: venv test demo bench submit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest

# Two untrained resnet18 experts explain generated X-rays (and the sample DICOMs when present).
demo: venv
	rm -rf $(DEMO)
	$(BIN)/dualcam synth --out $(DEMO)/images --n 8 --size 256
	$(BIN)/dualcam expert init --arch resnet18 --class-name COVID-19 --input-size 224 --out $(DEMO)/experts/covid-19
	$(BIN)/dualcam expert init --arch resnet18 --class-name pneumonia --input-size 224 --out $(DEMO)/experts/pneumonia
	$(BIN)/dualcam explain --c1 $(DEMO)/experts/covid-19 --c2 $(DEMO)/experts/pneumonia --alpha 5 \
		--out $(DEMO)/overlays $(DEMO)/images $(wildcard $(XRAY_SAMPLES)/dicom)
	$(BIN)/dualcam score --c1 $(DEMO)/experts/covid-19 --c2 $(DEMO)/experts/pneumonia --alpha 5 \
		--input $(DEMO)/images --output $(DEMO)/results
	$(BIN)/python -c "import pyarrow.parquet as pq; t = pq.read_table('$(DEMO)/results'); \
		print(t.select(['uri', 'status', 'p1', 'p2', 'peak_x', 'peak_y', 'heatmap_max']).to_pandas().to_string())"
	@echo "demo: the experts are untrained (random weights), so the heatmaps show the path, not the method."

# Images/s of the bare forward, the scorer, and the pipeline from local files and from S3 (moto).
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m dualcam.benchmark $(BENCH_ARGS)

# A job spec to a Ray cluster: make submit JOB=jobs/examples/score.yaml RAY_ADDRESS=http://HEAD:8265
# The spec's `job:` key picks the entrypoint, jobs/<job>.py; the spec is checked here before upload.
# SUBMIT_ARGS=--no-wait returns once the job is submitted instead of following its log to the end.
RUNTIME_ENV ?= cluster/runtime_env.yaml
SUBMIT_ARGS ?=
submit: venv
	@test -n "$(JOB)" -a -n "$(RAY_ADDRESS)" || { echo "usage: make submit JOB=spec.yaml RAY_ADDRESS=http://HEAD:8265"; exit 2; }
	entrypoint=$$($(BIN)/python -c "import sys; from dualcam.jobspec import load_spec; print(load_spec(sys.argv[1]).entrypoint)" '$(JOB)') && \
	$(BIN)/ray job submit --address '$(RAY_ADDRESS)' --working-dir . --runtime-env '$(RUNTIME_ENV)' $(SUBMIT_ARGS) \
		-- python $$entrypoint '$(JOB)'

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .pytest_cache
