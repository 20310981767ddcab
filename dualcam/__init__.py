"""dualcam: dual-expert class activation maps and the ADDK kernel, for X-ray classifiers at scale.

The public API is re-exported here. Nothing in this package imports Ray except the Ray layer,
so ``import dualcam`` and the scorer work where Ray is not installed.
"""

from dualcam.distributed.pipeline import DriftSummary, ScoreSummary, drift_archive, score_archive
from dualcam.io.checkpoints import (
    POSITIVE_INDEX,
    SUPPORTED_ARCHS,
    CheckpointError,
    Expert,
    ExpertMeta,
    build_expert,
    load_expert,
    load_meta,
    save_expert,
)
from dualcam.io.imaging import MAX_PIXELS, DecodeError, decode_image, model_input, preprocess
from dualcam.io.results import read_results
from dualcam.maps.cam import forward_with_cams, upsample
from dualcam.maps.kernel import addk
from dualcam.scoring.scorers import DriftScorer, DualScorer

__version__ = "0.1.0"

__all__ = [
    "MAX_PIXELS",
    "POSITIVE_INDEX",
    "SUPPORTED_ARCHS",
    "CheckpointError",
    "DecodeError",
    "DriftScorer",
    "DriftSummary",
    "DualScorer",
    "Expert",
    "ExpertMeta",
    "ScoreSummary",
    "addk",
    "build_expert",
    "decode_image",
    "drift_archive",
    "forward_with_cams",
    "load_expert",
    "load_meta",
    "model_input",
    "preprocess",
    "read_results",
    "save_expert",
    "score_archive",
    "upsample",
]
