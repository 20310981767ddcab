"""The old name of jobs/train.py, kept for one release: it says so on stderr, then runs the same job."""

import sys

from dualcam.jobspec import run_job

if __name__ == "__main__":
    sys.exit(run_job("train_experts", sys.argv[1:]))
