"""The old name of jobs/drift.py, kept for one release: it says so on stderr, then runs the same job."""

import sys

from dualcam.jobspec import run_job

if __name__ == "__main__":
    sys.exit(run_job("detect_drift", sys.argv[1:]))
