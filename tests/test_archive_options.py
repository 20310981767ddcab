"""ArchiveOptions: an archive run's options defined once, and refused before any work when unusable."""

import re

import pytest

from dualcam.scoring.archive_options import ArchiveOptions

from conftest import run_without_ray


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("alpha", -1.0, "alpha must be a finite number >= 0, got -1.0"),
    ("alpha", float("inf"), "alpha must be a finite number >= 0, got inf"),
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("batch_size", "16", "batch_size must be an integer >= 1, got '16'"),
    ("batch_size", 2.5, "batch_size must be an integer >= 1, got 2.5"),
    ("precision", "fp64", "precision must be one of fp32, tf32, fp16, bf16, got 'fp64'"),
    ("actors", 0, "actors must be an integer >= 1, got 0"),
    ("gpus_per_actor", -1, "gpus_per_actor must be a number >= 0, got -1"),
    ("cpus_per_actor", 0, "cpus_per_actor must be a number > 0, got 0"),
    ("limit", -1, "limit must be an integer >= 0, got -1"),
    ("max_error_fraction", 1.5, "max_error_fraction must be a share in [0, 1], got 1.5"),
    ("rows_per_file", 0, "rows_per_file must be an integer >= 1, got 0"),
    ("retry_errors", "yes", "retry_errors must be true or false, got 'yes'"),
    ("progress", 1, "progress must be true or false, got 1"),
    ("dry_run", "no", "dry_run must be true or false, got 'no'"),
    ("rates", "decode=fast", "rates 'decode=fast': expected decode=N[,gpu=N][,cpu=N] (images/s)"),
    ("rates", "gpu=1000", "rates 'gpu=1000': decode=N (images/s per CPU core) is needed"),
    ("rates", "decode=0", "rates: decode_per_cpu must be a positive number of images/s, got 0.0"),
    ("cluster", "8", "cluster '8': expected NODES,CPUS[,GPUS] per node, say 8,16,1"),
    ("cluster", "0,8", "a cluster needs at least one node of at least one CPU, got 0 of 8 CPU, 0 GPU"),
])
def test_unusable_options_are_refused_naming_the_option(field, value, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        ArchiveOptions(**{field: value})


def test_usable_options_and_the_command_line_form():
    edge = ArchiveOptions(alpha=0, batch_size=1, actors=1, gpus_per_actor=0, cpus_per_actor=0.5, limit=0,
                          max_error_fraction=1)  # YAML gives ints where floats are meant: taken as they are
    assert (edge.alpha, edge.limit, edge.max_error_fraction) == (0, 0, 1)
    assert ArchiveOptions.from_arguments(no_progress=True, batch_size=4) == ArchiveOptions(batch_size=4, progress=False)
    assert ArchiveOptions.from_arguments().progress
    with pytest.raises(TypeError):
        ArchiveOptions.from_arguments(batch_sise=4)


def test_commands_refuse_them_with_status_2_before_ray_is_imported(tmp_path):
    archive = ["--input", str(tmp_path), "--output", str(tmp_path / "out")]
    code = (  # Ray cannot even be imported here: the refusal must come first
        "import sys\nsys.stderr = sys.stdout\nfrom dualcam.cli import main\n"
        f"print(main(['score', '--expert1', 'a', '--expert2', 'b', *{archive!r}, '--batch-size', '0']))\n"
        f"print(main(['drift', '--old-expert', 'a', '--new-expert', 'b', *{archive!r}, '--alpha', '-1']))\n"
        f"print(main(['score', '--expert1', 'a', '--expert2', 'b', *{archive!r}, '--max-error-fraction', '2']))\n"
    )
    printed = run_without_ray(code).splitlines()
    assert printed == ["dualcam: error: batch_size must be an integer >= 1, got 0", "2",
                       "dualcam: error: alpha must be a finite number >= 0, got -1.0", "2",
                       "dualcam: error: max_error_fraction must be a share in [0, 1], got 2.0", "2"]
    assert not (tmp_path / "out").exists()
