"""Pictures (render), the HTML report (report) and `dualcam render` end to end on results made without Ray."""

import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dualcam import DualScorer, build_expert, save_expert
from dualcam.cli import main
from dualcam.io import storage
from dualcam.io.results import RUN_FILE, read_results, to_numpy
from dualcam.maps.kernel import get_kernel, overlap
from dualcam.reports.drawing import (
    BACKGROUND,
    BOX_COLORS,
    GAP,
    LEGEND_HEIGHT,
    MARK_COLOR,
    SCALE_HEIGHT,
    TITLE_HEIGHT,
    colorize,
    overlay,
    panel_row,
    panel_size,
)
from dualcam.reports.html_page import Report, format_value
from dualcam.reports.score_page import render_results, review_rows
from dualcam.scoring.scorers import load_images
from dualcam.synthetic.scenarios import synthetic_xray

INFERNO = matplotlib.colormaps["inferno"]


# --- render ------------------------------------------------------------------------------------

def test_colorize_is_matplotlibs_inferno_and_clips():
    values = np.array([[0.0, 0.25, 0.5, 1.0], [-3.0, 0.75, 0.999, 7.0]])
    rgb = colorize(values)
    assert rgb.shape == (2, 4, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb[0], INFERNO(values[0])[:, :3])
    np.testing.assert_allclose(rgb[0, 0], [0.001462, 0.000466, 0.013866], atol=1e-6)  # inferno's published ends
    np.testing.assert_allclose(rgb[0, 3], [0.988362, 0.998364, 0.644924], atol=1e-6)
    np.testing.assert_array_equal(rgb[1, 0], rgb[0, 0])
    np.testing.assert_array_equal(rgb[1, 3], rgb[0, 3])
    np.testing.assert_allclose(colorize(values[:1], "viridis")[0], matplotlib.colormaps["viridis"](values[0])[:, :3])


def test_overlay_blends_min_max_scaled_map_over_gray():
    image = np.full((4, 5, 3), 0.5, np.float32)
    heat = np.zeros((4, 5), np.float32)
    heat[1, 2] = 40.0  # raw scale: the picture min-max scales it
    out = overlay(image, heat, opacity=0.45)
    assert out.size == (5, 4) and out.mode == "RGB"
    pixels = np.asarray(out).astype(int)
    expected_peak = np.round(255 * (0.55 * 0.5 + 0.45 * np.array(INFERNO(1.0)[:3]))).astype(int)
    expected_low = np.round(255 * (0.55 * 0.5 + 0.45 * np.array(INFERNO(0.0)[:3]))).astype(int)
    np.testing.assert_array_equal(pixels[1, 2], expected_peak)
    np.testing.assert_array_equal(pixels[0, 0], expected_low)
    flat = np.asarray(overlay(image[..., 0], np.ones((4, 5)))).astype(int)  # constant map: all at its low end
    assert (flat == expected_low).all()


@pytest.mark.parametrize("grid", [(2, 2), (7, 7), (13, 9), (300, 200)])
def test_panel_row_has_the_documented_size(grid):
    image = np.random.default_rng(0).random((300, 200))
    maps = [(f"map {i}", np.random.default_rng(i).random(grid)) for i in range(3)]
    pw, ph = panel_size(300, 200)
    assert (pw, ph) == (213, 320)
    assert panel_row(image, maps).size == (3 * pw + 2 * GAP, TITLE_HEIGHT + ph + SCALE_HEIGHT)
    assert panel_row(image, maps[:1], side=None).size == (200, TITLE_HEIGHT + 300 + SCALE_HEIGHT)
    boxed = panel_row(image, maps[:2], boxes=[("F1", (0, 0, 10, 10))], side=64)
    assert boxed.size == (2 * 43 + GAP, TITLE_HEIGHT + 64 + SCALE_HEIGHT + LEGEND_HEIGHT)


def test_each_panel_has_its_own_colour_scale_and_a_constant_map_says_so():
    image = np.zeros((40, 50))
    out = np.asarray(panel_row(image, [("ramp", np.arange(12.0).reshape(3, 4)), ("flat", np.full((3, 4), 2.0))],
                               side=None)).astype(int)
    bar = out[TITLE_HEIGHT + 40 + 3: TITLE_HEIGHT + 40 + 9]  # the 6-pixel colour bar under the panels
    ramp, flat = bar[:, :50], bar[:, 50 + GAP:]
    expected = np.round(colorize(np.linspace(0, 1, 50)) * 255).astype(int)
    np.testing.assert_array_equal(ramp[0], expected)  # from the map's min (black) to its max (yellow)
    assert (ramp == ramp[0]).all()
    assert (flat == BACKGROUND).all()  # a constant map has no bar...
    text = out[TITLE_HEIGHT + 40 + 9:]
    assert (text[:, 50 + GAP:] != BACKGROUND).any(axis=2).any()  # ...but says so


def test_a_mark_rings_a_point_of_its_panel_only():
    image = np.zeros((100, 100))
    out = np.asarray(panel_row(image, [("a", np.eye(5)), ("b", np.eye(5))], marks=[None, (30, 60)], side=None))
    green = (out == MARK_COLOR).all(axis=2)
    ys, xs = np.nonzero(green)
    assert xs.min() > 100 + GAP  # on the second panel only
    assert abs(xs.mean() - (100 + GAP + 30.5)) < 1 and abs(ys.mean() - (TITLE_HEIGHT + 60.5)) < 1  # centred
    with pytest.raises(ValueError, match="3 marks for 2 panels"):
        panel_row(image, [("a", np.eye(5)), ("b", np.eye(5))], marks=[None, None, None])


def test_boxes_are_outlined_on_every_panel_in_one_colour_per_label():
    image = np.zeros((100, 100))
    boxes = [("F1", (10, 20, 30, 40)), ("S", (60, 60, 20, 20)), ("F1", (70, 5, 10, 10))]
    out = np.asarray(panel_row(image, [("a", np.ones((7, 7))), ("b", np.eye(7))], boxes=boxes, side=None))
    for left in (0, 100 + GAP):
        top = TITLE_HEIGHT
        assert tuple(out[top + 20, left + 10]) == BOX_COLORS[0]  # corner of the first F1 box
        assert tuple(out[top + 40, left + 10]) == BOX_COLORS[0]  # its left edge
        assert tuple(out[top + 59, left + 39]) == BOX_COLORS[0]  # its bottom-right corner
        assert tuple(out[top + 40, left + 25]) != BOX_COLORS[0]  # inside, not filled
        assert tuple(out[top + 70, left + 60]) == BOX_COLORS[1]  # S: the second colour
        assert tuple(out[top + 5, left + 79]) == BOX_COLORS[0]  # the second F1 box, same colour
    legend = out[TITLE_HEIGHT + 100 + SCALE_HEIGHT:]
    assert legend.shape[0] == LEGEND_HEIGHT
    assert (legend == BOX_COLORS[0]).all(axis=2).any() and (legend == BOX_COLORS[1]).all(axis=2).any()


# --- report ------------------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def referenced_files(index: Path) -> list[Path]:
    """Every src/href of the page, checked to be relative and existing."""
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    paths = [index.parent / link for link in parser.links]
    assert all(not link.startswith(("/", "http:", "https:", "file:")) for link in parser.links)
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, missing
    return paths


def test_report_writes_pngs_it_links_and_escapes_text(tmp_path):
    report = Report(tmp_path / "r", "<b>title</b> & co")
    report.heading("a <heading>")
    report.paragraph('say "<script>alert(1)</script>"')
    report.table([{"name": "<i>x</i>", "auc": 0.912345, "n": 12}, {"name": "y", "auc": float("nan"), "extra": None}],
                 caption="metrics & more")
    report.figure(Image.new("RGB", (30, 20), (255, 0, 0)), "a figure/with odd name", "cap <tion>")
    report.histogram({"COVID-19": np.array([0.1, 0.2, np.nan]), "normal": np.array([0.8])}, "p1", "p1 per label",
                     "p1: probability")
    with pytest.raises(ValueError, match="used twice"):
        report.figure(Image.new("RGB", (2, 2)), "p1", "again")
    index = report.write()
    assert index == tmp_path / "r" / "index.html"
    page = index.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;title&lt;/b&gt; &amp; co" in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page and "metrics &amp; more" in page and "cap &lt;tion&gt;" in page
    assert ">0.9123<" in page and page.count(">–<") == 4  # row 1: no extra; row 2: NaN auc, no n, None extra
    files = referenced_files(index)
    assert len(files) == 2 and all(p.parent.name == "images" for p in files)
    with Image.open(files[0]) as im:
        assert im.format == "PNG" and im.size == (30, 20)
    with Image.open(files[1]) as im:
        im.verify()


def test_format_value():
    assert [format_value(v) for v in (None, float("nan"), np.float32("nan"), 0.0, 0.912345, 12.5, 1234.56,
                                      1.5e7, 2e-5, 3, np.int64(4), True, "s")] == [
        "–", "–", "–", "0", "0.9123", "12.5", "1234.6", "1.5e+07", "2e-05", "3", "4", "True", "s"]


# --- render_results end to end -----------------------------------------------------------------

LABELS = ["COVID-19", "pneumonia", "COVID-19", "COVID-19", "normal", "COVID-19"]
SPLITS = ["test", "test", "train", "test", "test", "test"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A results folder as `dualcam score` writes it (one Parquet file and _run.json), made without Ray."""
    root = tmp_path_factory.mktemp("scored")
    torch.manual_seed(0)
    experts = []
    for name in ("COVID-19", "pneumonia"):
        experts.append(str(root / name))
        save_expert(build_expert("resnet18"), experts[-1], {"arch": "resnet18", "class_name": name, "input_size": 96})
    rng = np.random.default_rng(0)
    uris = []
    for i, (height, width) in enumerate([(120, 120), (90, 150), (120, 120), (150, 100), (120, 120), (120, 120)]):
        path = root / "images" / f"x{i}.png"
        path.parent.mkdir(exist_ok=True)
        image = synthetic_xray(max(height, width), rng)[:height, :width]
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        uris.append(str(path))
    scorer = DualScorer(*experts, alpha=15.0, device="cpu")
    manifest = pa.table({"uri": uris, "label": LABELS, "split": SPLITS})
    out = root / "results"
    out.mkdir()
    pq.write_table(scorer(load_images(manifest, scorer.meta)), out / "part-0.parquet")
    (out / RUN_FILE).write_text(scorer.spec.to_json())
    return root, uris


def test_render_results_writes_the_report_with_figures_of_the_documented_size(scored, tmp_path):
    root, uris = scored
    (root / "boxes.csv").write_text("uri,x,y,w,h,kind\nimages/x3.png,10,20,30,40,F1\nimages/x3.png,50,60,20,20,S\n")
    evaluation = {"localization": [{"kind": "F1", "iou": 0.41234, "hit": float("nan")}],
                  "experts": [{"expert": "COVID-19", "auc": 0.5}], "cam_correlation": {"mean": 0.875, "median": 0.9},
                  "cam_grid": [6, 6], "nested": {"a": {"b": 1}}}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    rendered = render_results(str(root / "results"), tmp_path / "report", n=2, alphas=(1, 5, 50),
                              boxes=str(root / "boxes.csv"), evaluation=str(tmp_path / "evaluation.json"), side=64)

    # test split, labelled as expert 1's class (x0, x3, x5), the first two by uri
    assert rendered.images == 2 and rendered.figures == 6 and rendered.skipped == []
    files = referenced_files(rendered.report)
    names = sorted(p.name for p in files)
    assert names == ["01-x0.png-alphas.png", "01-x0.png-triple.png", "02-x3.png-alphas.png",
                     "02-x3.png-triple.png", "p1.png", "p2.png"]
    sizes = {p.name: Image.open(p).size for p in files}
    height = TITLE_HEIGHT + 64 + SCALE_HEIGHT
    assert sizes["01-x0.png-triple.png"] == (3 * 64 + 2 * GAP, height)
    assert sizes["01-x0.png-alphas.png"] == (3 * 64 + 2 * GAP, height)
    assert sizes["02-x3.png-triple.png"] == (3 * 43 + 2 * GAP, height + LEGEND_HEIGHT)  # 100 x 150, boxes
    page = rendered.report.read_text(encoding="utf-8")
    for text in ("paper (ADDK)", "localization", "0.4123", "boxes: F1, S", "its maximum (yellow)",
                 "<td>cam_correlation mean</td><td class=\"num\">0.875</td>",
                 "<td>cam_correlation median</td><td class=\"num\">0.9</td>", "<td>cam_grid</td><td>6, 6</td>"):
        assert text in page, text
    # images named relative to the folder they share, which is named once
    assert f"Image paths are relative to {root / 'images'}." in page
    assert "x0.png (label COVID-19); overlap " in page and f"{root / 'images' / 'x0.png'}" not in page
    assert "<caption>nested" not in page
    assert "Not shown (neither a number or text nor a list of flat objects): nested." in page

    # the kernel drawn is addk recomputed from the stored CAMs at the run's alpha: the stored heatmap
    table = read_results(str(root / "results"))
    cam1, cam2, stored = (np.array(to_numpy(table.column(c))) for c in ("cam1", "cam2", "heatmap"))
    np.testing.assert_allclose(get_kernel("addk")(cam1, cam2, 15.0), stored, rtol=1e-5)
    image = np.asarray(Image.open(uris[0]), np.float32) / 255
    alone = np.asarray(panel_row(image, [("stored", stored[0])], side=64))[TITLE_HEIGHT:].astype(int)
    drawn = np.asarray(Image.open(rendered.report.parent / "images" / "01-x0.png-triple.png"))
    third = drawn[TITLE_HEIGHT:, 2 * (64 + GAP):].astype(int)  # the panel, then its colour scale
    assert np.abs(third - alone).max() <= 1


def test_render_without_label_takes_the_highest_p1_and_skips_undecodable_images(scored, tmp_path):
    root, uris = scored
    table = pq.read_table(root / "results" / "part-0.parquet").drop_columns(["label", "split"])
    (tmp_path / "results").mkdir()
    pq.write_table(table, tmp_path / "results" / "part-0.parquet")  # no _run.json: spec from the rows
    p1 = table.column("p1").to_numpy()
    top = sorted(np.argsort(-p1)[:3])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    uris_now = table.column("uri").to_pylist()
    uris_now[top[1]] = str(broken)
    pq.write_table(table.set_column(0, "uri", pa.array(uris_now)), tmp_path / "results" / "part-0.parquet")

    rendered = render_results(str(tmp_path / "results"), tmp_path / "report", n=3, kernel="gated")
    assert rendered.images == 2 and rendered.figures == 6
    assert len(rendered.skipped) == 1 and rendered.skipped[0].startswith(f"{broken}: ")
    page = rendered.report.read_text(encoding="utf-8")
    assert "highest p1" in page and "gated: dualcam" in page
    referenced_files(rendered.report)


def test_render_command(scored, tmp_path, capsys):
    root, _ = scored
    results = str(root / "results")
    assert main(["render", "--results", results, "--output", str(tmp_path / "r"), "--rows", "1", "--alphas",
                 "5,15"]) == 0
    assert f"1 images drawn, 0 listed for review (4 figures, 0 skipped); report: {tmp_path / 'r' / 'index.html'}" \
        in capsys.readouterr().out  # the untrained expert 1 calls none positive
    for args, message in [
        (["--results", str(tmp_path / "nothing")], "no results"),
        (["--results", results, "--kernel", "nope"], "unknown kernel 'nope'"),
        (["--results", results, "--alphas", "1,x"], "expected comma-separated numbers, got '1,x'"),
        (["--results", results, "--alphas", "-1"], "alphas must be finite numbers >= 0"),
        (["--results", results, "--review-rows", "-1"], "--review-rows must be at least 0"),
        (["--results", results, "--evaluation", str(tmp_path / "missing.json")], "missing.json"),
    ]:
        assert main(["render", "--output", str(tmp_path / "bad"), *args]) == 2, args
        assert message in capsys.readouterr().err, args


def test_render_reads_results_and_images_from_s3(scored, s3_bucket, tmp_path):
    root, uris = scored
    table = pq.read_table(root / "results" / "part-0.parquet")
    s3_uris = [f"{s3_bucket}/images/{Path(u).name}" for u in uris]
    for local, remote in zip(uris, s3_uris):
        storage.write_bytes(remote, Path(local).read_bytes())
    buf = pa.BufferOutputStream()
    pq.write_table(table.set_column(0, "uri", pa.array(s3_uris)), buf)
    storage.write_bytes(f"{s3_bucket}/results/part-0.parquet", buf.getvalue().to_pybytes())
    storage.write_bytes(f"{s3_bucket}/results/{RUN_FILE}", (root / "results" / RUN_FILE).read_bytes())
    storage.write_bytes(f"{s3_bucket}/boxes.csv", b"uri,x,y,w,h,kind\nimages/x0.png,1,2,30,40,F1\n")

    rendered = render_results(f"{s3_bucket}/results", tmp_path / "report", n=1, alphas=(5,),
                              boxes=f"{s3_bucket}/boxes.csv", side=64)
    assert rendered.images == 1 and rendered.skipped == []
    triple = next(p for p in referenced_files(rendered.report) if p.name.endswith("-triple.png"))
    assert Image.open(triple).size == (3 * 64 + 2 * GAP, TITLE_HEIGHT + 64 + SCALE_HEIGHT + LEGEND_HEIGHT)
    page = rendered.report.read_text(encoding="utf-8")
    assert f"{s3_uris[0]} (label COVID-19)" in page and "relative to" not in page  # URIs as they are


def _with(table, **columns):
    """``table`` with these float32 columns replaced."""
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.float32()))
    return table


def test_review_lists_c1_calls_by_overlap_with_their_triples(scored, tmp_path):
    root, uris = scored
    table = _with(pq.read_table(root / "results" / "part-0.parquet"),
                  p1=[0.9, 0.8, 0.2, 0.7, 0.95, 0.6], overlap=[0.1, 0.9, 0.99, 0.5, 0.3, 0.7])
    (tmp_path / "results").mkdir()
    pq.write_table(table, tmp_path / "results" / "part-0.parquet")
    (tmp_path / "results" / RUN_FILE).write_bytes((root / "results" / RUN_FILE).read_bytes())

    listed, how = review_rows(table, 3, "COVID-19")
    # x2 has the highest overlap, but expert 1 does not call it (p1 0.2)
    assert listed.column("uri").to_pylist() == [uris[1], uris[5], uris[3]]
    assert "The 3 of the 5 scored rows expert 1 calls COVID-19 (p1 >= 0.5)" in how
    rendered = render_results(str(tmp_path / "results"), tmp_path / "report", n=1, alphas=(5,), review=3, side=64)
    assert (rendered.images, rendered.reviewed, rendered.figures) == (1, 3, 2 * 1 + 3 + 2)
    names = sorted(p.name for p in referenced_files(rendered.report))
    assert [n for n in names if n.startswith("review-")] == [
        "review-01-x1.png-triple.png", "review-02-x5.png-triple.png", "review-03-x3.png-triple.png"]
    page = rendered.report.read_text(encoding="utf-8")
    assert "Review: COVID-19 calls that rest on evidence expert 2 also claims" in page
    names = [Path(u).name for u in uris]  # the page names images relative to the folder they share
    rows = [page.index(f"<td>{names[i]}</td>") for i in (1, 5, 3)]
    assert rows == sorted(rows) and f"<td>{names[2]}</td>" not in page and uris[1] not in page
    assert f"{names[1]} (label pneumonia); overlap 0.900" in page
    off = render_results(str(tmp_path / "results"), tmp_path / "off", n=1, alphas=(5,), review=0, side=64)
    assert off.reviewed == 0 and "Review:" not in off.report.read_text(encoding="utf-8")


def test_review_of_schema_1_results_computes_the_overlap_from_the_cams(scored, tmp_path):
    root, uris = scored
    table = pq.read_table(root / "results" / "part-0.parquet")
    stored = table.column("overlap").to_numpy()
    cams = [np.array(to_numpy(table.column(c))) for c in ("cam1", "cam2")]
    np.testing.assert_array_equal(stored, overlap(*cams))
    assert len(set(stored.tolist())) == 6  # a strict order to find again
    v1 = _with(table.drop_columns(["overlap"]), p1=[0.9] * 6)
    listed, _ = review_rows(v1, 6, "COVID-19")
    expected = sorted(range(6), key=lambda i: (-stored[i], uris[i]))
    assert listed.column("uri").to_pylist() == [uris[i] for i in expected]
    np.testing.assert_array_equal(listed.column("overlap").to_numpy(), stored[expected])
    (tmp_path / "results").mkdir()
    pq.write_table(v1, tmp_path / "results" / "part-0.parquet")  # no _run.json: spec from the rows
    rendered = render_results(str(tmp_path / "results"), tmp_path / "report", n=1, alphas=(5,), review=2, side=64)
    assert rendered.reviewed == 2
