"""Ray job: compare two versions of an expert on an archive, as `dualcam drift` does. The spec: dualcam/jobspec.py.

    python jobs/drift.py SPEC.yaml         # on the Ray at RAY_ADDRESS, else a local one
    make submit JOB=SPEC.yaml RAY_ADDRESS=http://HEAD:8265

Exits 3 when more than max_drift_share of the images drifted, so a scheduler can alert on it.
"""

import sys

from dualcam.jobspec import run_job

if __name__ == "__main__":
    sys.exit(run_job("drift", sys.argv[1:]))
