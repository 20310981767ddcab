# Every target sets up .venv itself (created, or refreshed when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := .demo

.PHONY: venv docs lint lint-cluster test faults demo experiment bench peers scale precision gpu-check submit constraints \
	pin-image clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(STAMP)

# pyproject.toml's peers extra (MONAI, pytorch-grad-cam, Captum) and xrv extra (TorchXRayVision) in .venv, under a
# constraint that holds torch and torchvision at the versions .venv has: make peers and the tests compare against
# them (tests/test_peers.py, tests/test_xrv.py).
PEERS_STAMP := $(VENV)/.peers-installed
$(PEERS_STAMP): $(STAMP)
	$(BIN)/python -m pip freeze | grep -i -E '^(torch|torchvision)==' > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint $(VENV)/torch-constraint.txt \
		-e '.[peers,xrv]'
	touch $@

# ruff, then mypy (pyproject.toml's [tool.mypy]: every function annotated, calls checked across modules).
# The reference pages made from the code (docs/reference/cli.md, schema.md); a test fails when they are stale.
docs: venv
	$(BIN)/python -m dualcam.reference docs/reference

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The cluster files through hadolint, checkov and kubernetes-validate (cluster/lint.py; skips, each with its
# reason: cluster/scanner-skips.yaml), then the same scanners on a copy with one flaw each, which each must find.
# The scanners live in a venv of their own, with pyproject.toml's cluster-lint extra only: checkov pins older
# boto3 and packaging than dualcam's venv has. CI runs it after make test, before make faults.
LINT_VENV := .venv-cluster-lint
$(LINT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LINT_VENV)
	$(PYTHON) -c "import shlex, tomllib; print(shlex.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['cluster-lint']))" \
		| xargs $(LINT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check
	touch $@

lint-cluster: $(LINT_VENV)/.installed
	$(LINT_VENV)/bin/python cluster/lint.py
	$(LINT_VENV)/bin/python cluster/lint.py --self-check

# The peers and xrv extras and lint (ruff and mypy) first: CI runs make test, then make lint-cluster, then make
# faults. The 25 slowest tests are listed at the end, so a CI log says where the time went.
test: $(PEERS_STAMP) lint
	$(BIN)/python -m pytest --durations=25

# The fault suite: drivers, actors, S3 and a Ray node lost mid-run, each scenario's counts printed at the end.
faults: venv
	$(BIN)/python -m pytest -m faults

# The class-overlap scenario end to end: synthetic data with known boxes, both experts trained in the
# paper's regime on Ray Train, the test split scored on Ray Data, localization measured, figures drawn.
demo: venv
	rm -rf $(DEMO)
	$(BIN)/dualcam demo --output $(DEMO)

# The four training regimes compared on both data scenarios, overlap and salient-shared, once per seed
# (3 seeds; each draws its own data): 100 images per class and 6 epochs per seed, half the images and
# three quarters of the epochs of the one-seed run that took 40 minutes here; 51 minutes on 2 CPU cores
# shared with other jobs (docs/science/does-addk-help.md).
EXPERIMENT := .experiment
experiment: venv
	rm -rf $(EXPERIMENT)
	$(BIN)/dualcam experiment --output $(EXPERIMENT)

# Images/s of the bare forward, the scorer, and the pipeline from local files and from S3 (moto); then
# loading costs and the pipeline on real-size files (docs/guide/scoring.md: Speed, Actors on CPUs).
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m dualcam.bench.speed $(BENCH_ARGS)

# dualcam's CAMs against MONAI's CAM, pytorch-grad-cam's GradCAM and Captum's LayerGradCam on make demo's experts
# (an untrained pair without them) and the sample X-rays: the identities, then images/s of each (docs/peers.md).
PEERS_ARGS ?=
peers: $(PEERS_STAMP)
	$(BIN)/python -m dualcam.bench.peers $(PEERS_ARGS)

# The driver's start-up (inputs, resume, blocks) at 10^4 to 10^6 inputs and listing a 50,000-object
# moto tree, by one paginator and by storage.list_uris (about 19 minutes on this 2-core VM while other jobs loaded it, most of it moto's).
SCALE_ARGS ?=
scale: venv
	$(BIN)/python -m dualcam.bench.scale $(SCALE_ARGS)

# The error each precision causes against float32 (docs/operations/gpus.md); on CPU, autocast emulates the GPU.
PRECISION_ARGS ?=
precision: venv
	$(BIN)/python -m dualcam.bench.precision_table $(PRECISION_ARGS)

# On a GPU machine: the GPU tests, then forward, decode and pipeline rates and GPU-against-CPU heatmaps
# (docs/operations/gpus.md). Without CUDA both say so and skip.
GPU_CHECK_ARGS ?=
gpu-check: venv
	$(BIN)/python -m pytest -m gpu -rs tests/test_gpu.py
	$(BIN)/python -m dualcam.bench.gpu_check $(GPU_CHECK_ARGS)

# A job spec to a Ray cluster: make submit JOB=jobs/examples/score.yaml RAY_ADDRESS=http://HEAD:8265
# The spec's `job:` key picks the entrypoint, jobs/<job>.py; the spec is checked here before upload.
# SUBMIT_ARGS=--no-wait returns once the job is submitted instead of following its log to the end.
# The clusters ask for Ray's token: RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it) must be set
# (docs/cluster.md says where each cluster keeps it); it goes to Ray's job CLI in the environment only.
RUNTIME_ENV ?= cluster/runtime_env.yaml
SUBMIT_ARGS ?=
submit: venv
	@test -n "$(JOB)" -a -n "$(RAY_ADDRESS)" || { echo "usage: make submit JOB=spec.yaml RAY_ADDRESS=http://HEAD:8265"; exit 2; }
	@test -n "$$RAY_AUTH_TOKEN$$RAY_AUTH_TOKEN_PATH" || { echo "make submit: set RAY_AUTH_TOKEN to the cluster's Ray token (docs/cluster.md)"; exit 2; }
	export RAY_AUTH_MODE=token && entrypoint=$$($(BIN)/python -c "import sys; from dualcam.jobspec import load_spec; print(load_spec(sys.argv[1]).entrypoint)" '$(JOB)') && \
	$(BIN)/ray job submit --address '$(RAY_ADDRESS)' --working-dir . --runtime-env '$(RUNTIME_ENV)' $(SUBMIT_ARGS) \
		-- python $$entrypoint '$(JOB)'

# cluster/constraints.txt, the versions the image installs, from this venv (make test passed in it): pip freeze,
# less dualcam itself. Refresh it when pyproject.toml's dependencies change, and rebuild the image.
constraints: venv
	{ echo "# Versions the image (cluster/Dockerfile) installs: pip freeze of the venv the tests passed in (make constraints)."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^dualcam'; } > cluster/constraints.txt

# The Ray base image by digest in cluster/Dockerfile and cluster/aws.yaml (needs crane or docker buildx).
pin-image:
	sh cluster/pin_image.sh

clean:
	rm -rf $(VENV) $(LINT_VENV) $(DEMO) $(EXPERIMENT) *.egg-info .pytest_cache .ruff_cache .mypy_cache
