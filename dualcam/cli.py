"""The ``dualcam`` command. Thin: every command calls the library functions users can call too."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dualcam import drift, regions, storage
from dualcam.cam import upsample
from dualcam.evaluation import DEFAULT_KERNELS, EVALUATION_FILE, evaluate, format_table
from dualcam.experts import OUTPUT_STRIDES, SUPPORTED_ARCHS, ExpertMeta, build_expert, load_meta, save_expert
from dualcam.figures import DEFAULT_N, DEFAULT_REVIEW, render_results
from dualcam.imaging import DecodeError, decode_image, is_image_name
from dualcam.jobspec import DRIFT_EXIT, exit_status, labels, run_drift, run_score, run_train
from dualcam.kernel import ALPHAS, KERNELS
from dualcam.pipeline import MAX_ERROR_FRACTION, connect
from dualcam.render import overlay
from dualcam.scenario import DEMO_RECIPE, REGIMES, demo, experiment
from dualcam.scoring import DualScorer
from dualcam.synthetic import DEFAULT_SCENARIO, OVERLAP_CLASSES, SCENARIOS, write_overlap_dataset
from dualcam.training import AUGMENTATIONS


def _inputs(uris: Sequence[str]) -> list[str]:
    """Files named directly, plus the image files found under named folders or s3:// prefixes."""
    found = []
    for uri in uris:
        listed = storage.list_files(uri)
        found += listed if listed == [uri] else [u for u in listed if is_image_name(u)]
    return found


def _decoded(files: Sequence[str]) -> Iterator[tuple[str, np.ndarray | None, Exception | None]]:
    """(uri, image, None) or (uri, None, error) per file: one bad file never stops the others."""
    for uri in files:
        try:
            yield uri, decode_image(storage.read_bytes(uri), uri), None
        except (DecodeError, OSError) as err:
            yield uri, None, err


def cmd_expert_init(args: argparse.Namespace) -> int:
    model = build_expert(args.arch, args.weights, args.output_stride)
    meta = ExpertMeta(arch=args.arch, class_name=args.class_name, input_size=args.input_size,
                      color_mode=args.color_mode, output_stride=args.output_stride, recipe={"init_weights": args.weights})
    meta = save_expert(model, args.out, meta)
    print(f"wrote expert {meta.class_name!r} ({meta.arch}, {meta.input_size} px, weights {args.weights}) "
          f"version {meta.version} to {args.out}")
    return 0


def cmd_expert_show(args: argparse.Namespace) -> int:
    print(json.dumps(load_meta(args.uri).to_dict(), indent=2))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    failed = 0
    files = _inputs(args.inputs)
    for uri, image, err in _decoded(files):
        if err:
            failed += 1
            print(f"error  {err}")
            continue
        mode = "RGB" if image.ndim == 3 else "gray"
        print(f"ok     {uri}  {image.shape[1]}x{image.shape[0]} {mode}  range [{image.min():.3f}, {image.max():.3f}]")
    print(f"{len(files) - failed} decoded, {failed} failed, of {len(files)} files")
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    scorer = DualScorer(args.c1, args.c2, alpha=args.alpha, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = _inputs(args.inputs)
    c1, c2 = scorer.c1.meta.class_name, scorer.c2.meta.class_name
    print(f"expert 1: {c1} {scorer.c1.meta.version}; expert 2: {c2} {scorer.c2.meta.version}; "
          f"alpha {scorer.alpha}; device {scorer.device}")
    print(f"{'p1':>6} {'p2':>6}  {'peak (x, y)':>12}  file")
    start, failed = time.perf_counter(), 0
    for uri, image, err in _decoded(files):
        if err:
            failed += 1
            print(f"{'-':>6} {'-':>6}  {'-':>12}  {err}")
            continue
        result = scorer.score(scorer.preprocess(image)[None])
        heat = upsample(result["heatmap"][0], image.shape[:2])
        x, y = (round(v) for v in regions.peak(torch.from_numpy(heat)[None])[0].tolist())
        name = Path(uri).stem
        overlay(image, heat).save(out / f"{name}.addk.png")
        print(f"{result['p1'][0]:6.3f} {result['p2'][0]:6.3f}  {f'({x}, {y})':>12}  {uri}")
    elapsed = time.perf_counter() - start
    print(f"{len(files) - failed} explained, {failed} failed, in {elapsed:.1f} s; overlays in {out}/")
    return 1 if failed and failed == len(files) else 0


def _command(run: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    """A command that passes its options to ``run`` as keywords, as a job spec does (``dualcam.jobspec``)."""
    return lambda args: run(**{k: v for k, v in vars(args).items() if k not in ("command", "func")})


def cmd_render(args: argparse.Namespace) -> int:
    rendered = render_results(args.results, args.out, n=args.n, alphas=_floats(args.alphas), kernel=args.kernel,
                              boxes=args.boxes, evaluation=args.evaluation, review=args.review)
    for line in rendered.skipped:
        print(f"skipped  {line}")
    print(f"{rendered.images} images drawn, {rendered.reviewed} listed for review ({rendered.figures} figures, "
          f"{len(rendered.skipped)} skipped); report: {rendered.report}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    data = write_overlap_dataset(args.out, args.n, args.size, args.seed, args.scenario)
    print(f"wrote {data.images} synthetic {args.size} px images of the {data.scenario} scenario ({args.n} each of "
          f"{', '.join(OVERLAP_CLASSES)}) under {args.out}; manifest {data.manifest}, boxes {data.boxes}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    evaluation = evaluate(args.results, args.boxes, alphas=_floats(args.alphas), kernels=labels(args.kernel) or [],
                          split=args.split or None)
    out = args.json or storage.join(args.results, EVALUATION_FILE)
    storage.write_json(out, evaluation)
    print(format_table(evaluation))
    print(f"evaluation written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    connect(quiet=True)
    demo(args.out, args.n, args.size, args.seed, replace(DEMO_RECIPE, epochs=args.epochs))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    connect(quiet=True)
    recipe = replace(DEMO_RECIPE, epochs=args.epochs)
    print(experiment(args.out, args.n, args.size, args.seed, recipe, labels(args.regimes) or [],
                     labels(args.scenarios) or []))
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in labels(text) or []]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def _add_expert_pair(parser: argparse.ArgumentParser) -> None:
    """--c1, --c2 and --alpha: what every command that scores with both experts takes."""
    parser.add_argument("--c1", required=True, help="expert 1 (class of interest): a checkpoint, or a folder of its versions (latest used); path or s3://")
    parser.add_argument("--c2", required=True, help="expert 2 (the overlapping class): a checkpoint, or a folder of its versions (latest used); path or s3://")
    parser.add_argument("--alpha", type=float, default=5.0, help="ADDK amplification (paper: 5, 15, 50; default 5)")


def _add_archive_run(parser: argparse.ArgumentParser) -> None:
    """What every command that runs over an archive on Ray takes: input, output, placement, resume."""
    parser.add_argument("--input", required=True,
                        help="folder, s3:// prefix, or manifest (.csv/.parquet with a uri column; other columns pass through)")
    parser.add_argument("--output", required=True, help="results folder: path or s3:// prefix")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--actors", type=int, default=None,
                        help="scoring actors (default: one per GPU; on CPU clusters, one per 8 CPUs)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="GPUs per actor (default 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="CPUs per actor (default 1 with GPUs; else up to 8, the cluster's CPUs on a small one)")
    parser.add_argument("--limit", type=int, default=None, help="score at most N of the inputs not yet scored")
    parser.add_argument("--max-error-fraction", type=float, default=MAX_ERROR_FRACTION,
                        help=f"exit 1 when a larger share of the inputs failed (default {MAX_ERROR_FRACTION})")
    parser.add_argument("--retry-errors", action="store_true",
                        help="score again the inputs that failed in earlier runs into this --output (their error rows are replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_output_stride(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-stride", type=int, choices=OUTPUT_STRIDES, default=32,
                        help="16 doubles the CAM grid (ResNets: last stage kept at stride 16; default 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualcam", description="Dual-expert CAMs and the ADDK kernel for X-ray classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    expert = sub.add_parser("expert", help="create and inspect expert checkpoints")
    expert_sub = expert.add_subparsers(dest="expert_command", required=True, metavar="SUBCOMMAND")
    init = expert_sub.add_parser("init", help="write an untrained or ImageNet-initialized expert checkpoint")
    init.add_argument("--arch", choices=SUPPORTED_ARCHS, default="resnet152", help="architecture (default resnet152)")
    init.add_argument("--class-name", required=True, help="the expert's positive class, e.g. COVID-19")
    init.add_argument("--input-size", type=int, default=224, help="square input size in pixels (default 224)")
    init.add_argument("--color-mode", choices=("L", "RGB"), default="L", help="L: grayscale on 3 channels (default)")
    _add_output_stride(init)
    init.add_argument("--weights", default="none",
                      help="none, imagenet (torchvision download) or a path/s3:// URI to a state dict (default none)")
    init.add_argument("--out", required=True, help="checkpoint directory: a path or s3:// prefix")
    init.set_defaults(func=cmd_expert_init)
    show = expert_sub.add_parser("show", help="print a checkpoint's expert.json")
    show.add_argument("uri", help="checkpoint directory: a path or s3:// prefix")
    show.set_defaults(func=cmd_expert_show)

    decode = sub.add_parser("decode", help="check that images decode; one line per file")
    decode.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")
    decode.set_defaults(func=cmd_decode)

    explain = sub.add_parser("explain", help="score a few images with both experts and write ADDK overlays")
    _add_expert_pair(explain)
    explain.add_argument("--out", default="explain", help="folder for the overlay PNGs (default ./explain)")
    explain.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    explain.add_argument("inputs", nargs="+", help="files, folders or s3:// prefixes")
    explain.set_defaults(func=cmd_explain)

    score = sub.add_parser(
        "score", help="score an archive on Ray: CAMs, ADDK heatmaps and scores to Parquet",
        description="Score every image of an archive with both experts on Ray (the cluster at RAY_ADDRESS, "
        "else a local one) and write one Parquet row per input. Rerunning the same command resumes. "
        "Exit status: 0 done; 1 too many inputs failed (--max-error-fraction) or none could be scored; "
        "2 unusable arguments, experts, input or output.",
    )
    _add_expert_pair(score)
    _add_archive_run(score)
    score.set_defaults(func=_command(run_score))

    drift_cmd = sub.add_parser(
        "drift", help="compare two versions of one expert on an archive: where did the new one start looking?",
        description="Score every image of an archive with an old and a new version of one expert (or two epochs "
        "of one training run) on Ray, in one pass, and write one Parquet row per input: both CAMs, ADDK(new, old) "
        "(where attention was gained) and ADDK(old, new) (where it was lost), and the drift measures "
        "cam_correlation, peak_shift_px, extra_mass_outside_old_top and delta_p (see the README). An image has "
        f"drifted when {drift.PRIMARY_MEASURE} < --threshold. Summaries: <output>/_drift.json and a page, "
        "<output>/_report/index.html, with the figure triples of the most drifted images. Rerunning "
        "the same command resumes. Exit status: 0 done, drift within --max-drift-share; 1 too many inputs failed "
        "(--max-error-fraction) or none could be scored; 2 unusable arguments, experts (not the same arch, class "
        f"and input size), input or output; {DRIFT_EXIT} more than --max-drift-share of the images drifted.",
    )
    drift_cmd.add_argument("--old", required=True, help="the old version: a checkpoint or a folder of versions (latest used), path or s3:// (an exported "
                           "epoch, <output>/<class>/_epochs/<run>/epoch-NNN, is one too)")
    drift_cmd.add_argument("--new", required=True, help="the new version: a checkpoint or a folder of versions (latest used), path or s3://")
    drift_cmd.add_argument("--alpha", type=float, default=5.0, help="ADDK amplification (default 5)")
    drift_cmd.add_argument("--threshold", type=float, default=drift.DRIFT_THRESHOLD,
                           help=f"an image has drifted when {drift.PRIMARY_MEASURE} is below this "
                           f"(default {drift.DRIFT_THRESHOLD})")
    drift_cmd.add_argument("--max-drift-share", type=float, default=drift.MAX_DRIFT_SHARE,
                           help=f"exit {DRIFT_EXIT} when a larger share of the images drifted (default {drift.MAX_DRIFT_SHARE})")
    drift_cmd.add_argument("--top-k", type=int, default=drift.TOP_K,
                           help=f"most drifted images listed in the summary (default {drift.TOP_K})")
    _add_archive_run(drift_cmd)
    drift_cmd.set_defaults(func=_command(run_drift))

    render = sub.add_parser(
        "render", help="the paper's figures for a few scored rows, and a static HTML report of a results folder",
        description="Draw, for up to N scored rows, the figure triple (CAM1, CAM2 and the kernel over the image) and "
        "an alpha strip, recomputing the kernel from the stored CAMs, and write them with a review list (the rows "
        "expert 1 calls positive whose overlap is highest, with their triples), the run's spec, histograms "
        "of p1 and p2 per label and an evaluation's tables to DIR/index.html (opens from disk). Rows: the test split "
        "when there is one; those labelled as expert 1's class, first by uri, when there is a label column, else the "
        "highest p1. Exit status: 0 done; 2 unusable arguments, results, boxes or evaluation.",
    )
    render.add_argument("--results", required=True, metavar="URI", help="results folder of dualcam score: path or s3:// prefix")
    render.add_argument("--out", required=True, metavar="DIR", help="local folder for index.html and images/")
    render.add_argument("--n", type=int, default=DEFAULT_N, help=f"rows to draw (default {DEFAULT_N})")
    render.add_argument("--review", type=int, default=DEFAULT_REVIEW, metavar="N",
                        help=f"list for review the N rows expert 1 calls positive whose overlap (the share of its "
                        f"evidence expert 2 also claims) is highest, with their triples; 0: no list (default {DEFAULT_REVIEW})")
    render.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS),
                        help="comma-separated alphas of the alpha strip (default %(default)s)")
    render.add_argument("--kernel", default="addk",
                        help=f"kernel recomputed from the CAMs: {', '.join(KERNELS)} (default addk, the paper's)")
    render.add_argument("--boxes", metavar="URI", help="CSV/Parquet of boxes to outline: uri, x, y, w, h (image pixels), kind")
    render.add_argument("--evaluation", metavar="JSON", help="JSON of dualcam evaluate: its lists of rows and scalars become tables")
    render.set_defaults(func=cmd_render)

    train = sub.add_parser(
        "train", help="fine-tune the binary experts on Ray Train, both at once (the paper's recipe by default)",
        description="Fine-tune one binary expert per class (C1, and C2 when given) concurrently on Ray (the cluster "
        "at RAY_ADDRESS, else a local one) and write each as <output>/<class>/<version>/. Defaults are the paper's "
        "recipe: ImageNet-pretrained ResNet-152, 2 outputs, SGD lr 0.001 momentum 0.9, 30 epochs, the epoch with the "
        "best validation accuracy kept, 60/20/20 splits. Rerunning the same command resumes an interrupted run.",
    )
    train.add_argument("--data", help="labelled images for both experts: a manifest (.csv/.parquet: uri, label, "
                       "optional patient_id, split), the COVID-19 collection's metadata.csv, Kermany's chest_xray "
                       "folder, or a root/<label>/... folder; local or s3://")
    train.add_argument("--c1", required=True, help="class of expert 1, the class of interest (e.g. COVID-19)")
    train.add_argument("--c2", help="class of expert 2, the overlapping class (e.g. PNEUMONIA); omit to train one expert")
    train.add_argument("--output", required=True, help="where experts are written: <output>/<class>/<version>/")
    train.add_argument("--c1-data", help="expert 1's own data (same forms as --data)")
    train.add_argument("--c2-data", help="expert 2's own data (same forms as --data)")
    train.add_argument("--c1-negatives", help="comma-separated labels that are expert 1's negatives (default: all others)")
    train.add_argument("--c2-negatives", help="comma-separated labels that are expert 2's negatives (default: all others)")
    train.add_argument("--views", default="PA", help="views kept from the COVID-19 collection, comma-separated (default PA)")
    train.add_argument("--arch", choices=SUPPORTED_ARCHS, default="resnet152", help="default resnet152")
    train.add_argument("--weights", default="imagenet",
                       help="starting weights: imagenet (torchvision), none, or a state dict path/s3:// URI (default imagenet)")
    train.add_argument("--init-from", action="append", default=[], metavar="URI",
                       help="warm start from an earlier version: an expert checkpoint (for the expert of its class) "
                       "or an earlier --output (each expert's latest version); repeatable")
    train.add_argument("--epochs", type=int, default=30, help="default 30")
    train.add_argument("--lr", type=float, default=0.001, help="SGD learning rate (default 0.001)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--batch-size", type=int, default=16, help="per worker (default 16)")
    train.add_argument("--image-size", type=int, default=224, help="square input size (default 224)")
    train.add_argument("--color-mode", choices=("L", "RGB"), default="L", help="L: grayscale on 3 channels (default)")
    _add_output_stride(train)
    train.add_argument("--augment", choices=AUGMENTATIONS, default="none",
                       help="light: small affine and brightness jitter, no flips (default none)")
    train.add_argument("--seed", type=int, default=0, help="for splits, shuffling and initialization (default 0)")
    train.add_argument("--workers-per-expert", type=int, default=1, help="Ray Train workers per expert; DDP when > 1")
    train.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 when the cluster has GPUs, else 0")
    train.add_argument("--cpus-per-worker", type=float, default=None,
                       help="default 1 with GPUs, else the cluster's CPUs shared among all workers")
    train.add_argument("--max-failures", type=int, default=2, help="worker failures retried per expert (default 2)")
    train.add_argument("--storage-path", help="Ray Train run storage (default <output>/_ray_train); shared storage on clusters")
    train.add_argument("--export-epochs", action="store_true",
                       help="also write every epoch's weights as an expert checkpoint, <output>/<class>/_epochs/<run>/"
                       "epoch-NNN/ (from 000), to compare epochs of one run with dualcam drift")
    train.set_defaults(func=_command(run_train))

    synth = sub.add_parser(
        "synth", help="write the class-overlap scenario: images, manifest and feature boxes",
        description="Write chest-X-ray-like images of three classes with known answers: C1 holds a shared feature "
        "S (a blurred disc) and its own F1 (a ring), C2 holds S and its own F2 (a cross), normal holds neither; "
        "distractors in every class. Writes images/<label>/, manifest.csv (uri, label, split 60/20/20) and "
        "boxes.csv (uri, x, y, w, h, kind).",
    )
    synth.add_argument("--out", required=True, help="output folder or s3:// prefix")
    synth.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    synth.add_argument("--size", type=int, default=96, help="side in pixels (default 96)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--scenario", choices=tuple(SCENARIOS), default=DEFAULT_SCENARIO,
                       help="overlap: S a faint disc, dimmer than F1 and F2; salient-shared: S larger and brighter "
                       "than F1 (default %(default)s)")
    synth.set_defaults(func=cmd_synth)

    evaluation = sub.add_parser(
        "evaluate", help="localization of CAM1, CAM2 and the kernels against known boxes, from stored results",
        description="Measure, on expert 1's class in the test split, how well CAM1, CAM2 and each kernel at each "
        "alpha point at the F1 box and at the shared S box (pointing game, energy in box, IoU of the top region), "
        "next to references (uniform map, the true box pooled to the CAM grid, CAM1 sharpened alone), plus the "
        "CAM1-CAM2 correlation, the overlap score and how well it flags the images where CAM1 points at S, and "
        "each expert's accuracy. Maps are recomputed from the stored raw CAMs.",
    )
    evaluation.add_argument("--results", required=True, help="a dualcam score output (of a manifest with uri, label, split)")
    evaluation.add_argument("--boxes", required=True, help="boxes file: CSV/Parquet with uri, x, y, w, h, kind (F1, S)")
    evaluation.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS),
                            help="comma-separated alphas (default 1,5,15,50)")
    evaluation.add_argument("--kernel", default=",".join(DEFAULT_KERNELS),
                            help=f"comma-separated kernels of {', '.join(KERNELS)} (default: all): addk is the paper's, "
                            "gated (ReLU(CAM1)/max * ADDK) and unshared (CAM1 sharpened less what CAM2 claims) "
                            "dualcam's own")
    evaluation.add_argument("--split", default="test", help="the split measured when results have a split column (default test; '' for all)")
    evaluation.add_argument("--json", help=f"where the JSON goes (default <results>/{EVALUATION_FILE})")
    evaluation.set_defaults(func=cmd_evaluate)

    demo_cmd = sub.add_parser(
        "demo", help="the class-overlap scenario end to end in the paper's regime (make demo)",
        description="Generate the class-overlap scenario, train both experts in the paper's regime on Ray Train, "
        "score the test split on Ray Data, evaluate localization and render the figures and an HTML report.",
    )
    demo_cmd.add_argument("--out", required=True, help="folder for data, experts, results and the report")
    demo_cmd.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    demo_cmd.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    demo_cmd.add_argument("--seed", type=int, default=0, help="data, splits and training seed (default 0)")
    demo_cmd.add_argument("--epochs", type=int, default=DEMO_RECIPE.epochs, help=f"default {DEMO_RECIPE.epochs}")
    demo_cmd.set_defaults(func=cmd_demo)

    exp = sub.add_parser(
        "experiment", help="compare training regimes on the class-overlap scenario (make experiment)",
        description="For each data scenario (overlap, salient-shared), generate its data, then for each regime train "
        "both experts, score the test split and evaluate; print tables comparing CAM1, CAM2, the kernels and the "
        "references across regimes, one set per scenario. Experts are reused across regimes when their data and "
        "recipe match.",
    )
    exp.add_argument("--out", required=True, help="folder or s3:// prefix for data, experts, results and tables")
    exp.add_argument("--n", type=int, default=200, help="images per class (default 200)")
    exp.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    exp.add_argument("--seed", type=int, default=0, help="data, splits and training seed (default 0)")
    exp.add_argument("--epochs", type=int, default=DEMO_RECIPE.epochs, help=f"default {DEMO_RECIPE.epochs}")
    exp.add_argument("--regimes", default=",".join(r.name for r in REGIMES), help="comma-separated (default: all)")
    exp.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated data scenarios (default: all)")
    exp.set_defaults(func=cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
