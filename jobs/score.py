"""Ray job: score an archive into Parquet, as `dualcam score` does. The spec: dualcam/jobspec.py.

    python jobs/score.py SPEC.yaml        # on the Ray at RAY_ADDRESS, else a local one
    make submit JOB=SPEC.yaml RAY_ADDRESS=http://HEAD:8265
"""

import sys

from dualcam.jobspec import run_job

if __name__ == "__main__":
    sys.exit(run_job("score", sys.argv[1:]))
