"""The ``dualcam`` commands, one module each: the one home of a command's options and of its work.

Every command module holds ``HELP`` (its line in ``dualcam --help``), ``DESCRIPTION`` (the text
of its own ``--help``, or None), ``add_arguments(parser)`` (its options, with the defaults taken
from where they are defined: ``ArchiveOptions``, ``Recipe``, the ``drift_measures`` constants...) and
``run(**options) -> int``, which does the work, prints what the command prints and returns its
exit status. ``run`` takes the options as keywords named as the parser names them (``--batch-size``
is ``batch_size``), so ``dualcam.cli`` (a command line) and ``dualcam.jobspec`` (a job spec's
keys) call the same function the same way; ``common.exit_status`` turns an exception for
unusable input into exit status 2.
"""
