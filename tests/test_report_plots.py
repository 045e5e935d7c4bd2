from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixmatch_bench.core.runs import Run
from fixmatch_bench.report.cells import CellResult, run_dir_name
from fixmatch_bench.report.plots import (
    Curve,
    figure_size_px,
    fold_band,
    load_curves,
    plot_error_curves,
    plot_error_vs_labels,
    plot_methods,
    plot_training_signals,
    read_curve,
)
from fixmatch_bench.report.published import load_published

PUBLISHED = load_published(Path(__file__).resolve().parents[1] / "reports" / "published.yaml")



def assert_png(path, size):
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines, text and bands, not a flat fill


def write_tsv(path, name, rows, timestamp_first=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["timestamp", "step", name] if timestamp_first else ["step", name, "timestamp"]
    lines = ["\t".join(header)]
    for step, value in rows:
        cells = {"timestamp": "1700000000000", "step": str(step), name: str(value)}
        lines.append("\t".join(cells[column] for column in header))
    path.write_text("\n".join(lines) + "\n")


def test_read_curve_reads_columns_by_name_and_keeps_the_last_repeated_step(tmp_path):
    path = tmp_path / "error.tsv"
    write_tsv(path, "error", [(0, 90.0), (32, 50.0), (32, 40.0), (64, 30.0)], timestamp_first=True)
    curve = read_curve(path)
    assert curve.steps.tolist() == [0, 32, 64]
    assert curve.values.tolist() == [90.0, 40.0, 30.0]
    assert read_curve(tmp_path / "absent.tsv") is None
    (tmp_path / "loss.tsv").write_text("step\tvalue\n0\t1.0\n")
    with pytest.raises(ValueError, match="expected columns 'step' and 'loss'"):
        read_curve(tmp_path / "loss.tsv")


def test_fold_band_aligns_on_common_steps():
    band = fold_band({
        1: Curve(np.array([0, 10, 20, 30]), np.array([9.0, 7.0, 5.0, 3.0])),
        2: Curve(np.array([0, 10, 20]), np.array([11.0, 9.0, 7.0])),  # unfinished fold
    })
    assert band.steps.tolist() == [0, 10, 20]
    assert band.mean.tolist() == [10.0, 8.0, 6.0]
    assert (band.low.tolist(), band.high.tolist(), band.folds) == ([9.0, 7.0, 5.0], [11.0, 9.0, 7.0], 2)
    assert fold_band({}) is None
    assert fold_band({1: Curve(np.array([0]), np.array([1.0])), 2: Curve(np.array([5]), np.array([1.0]))}) is None


def test_load_curves_keeps_every_expected_cell(tmp_path):
    runs = [Run("digits", 20, "fixmatch_ra", 1), Run("digits", 20, "fixmatch_ra", 2), Run("digits", 20, "supervised", 1)]
    live = tmp_path / run_dir_name(runs[0]) / "curves"
    write_tsv(live / "eval" / "error.tsv", "error", [(0, 80.0), (32, 20.0)])
    curves = load_curves(runs, tmp_path, "eval/error")
    assert list(curves) == [("digits", 20, "fixmatch_ra"), ("digits", 20, "supervised")]
    assert list(curves[("digits", 20, "fixmatch_ra")]) == [1]
    assert curves[("digits", 20, "supervised")] == {}


def _curve(offset, stop=2048):
    steps = np.arange(0, stop, 64)
    return Curve(steps, 60.0 * np.exp(-steps / 400.0) + offset)


def _lines(axes) -> dict[str, np.ndarray]:
    """Each labelled line of a panel, error bars' included: its (x, y) points."""
    lines = {line.get_label(): line.get_xydata() for line in axes.get_lines() if not line.get_label().startswith("_")}
    bars = {bars.get_label(): bars.lines[0].get_xydata() for bars in axes.containers if hasattr(bars, "has_yerr")}
    return {**lines, **bars}


def test_error_curves_plot_each_cells_fold_mean_with_its_band_and_the_published_mean(tmp_path):
    curves = {
        ("cifar10", 40, "fixmatch_ra"): {1: _curve(12.0), 2: _curve(15.0), 3: _curve(13.0, stop=1024)},
        ("cifar10", 40, "fixmatch_cta"): {1: _curve(11.0)},
        ("cifar10", 250, "fixmatch_ra"): {},
        ("digits", 20, "supervised"): {1: _curve(30.0), 2: _curve(31.0)},
    }
    figure = plot_error_curves(curves, PUBLISHED, tmp_path / "figures" / "error_curves.png")
    assert_png(tmp_path / "figures" / "error_curves.png", (1440, 360))  # three cells, 480 x 360 px each
    assert figure_size_px(4) == (1440, 720)  # a fourth cell opens a second row
    first, empty, digits = figure.axes
    lines = _lines(first)
    ra = lines["FixMatch (RA) (mean of 3 folds, min–max band)"]
    steps = np.arange(0, 1024, 64)  # the steps all three folds reached
    assert ra[:, 0].tolist() == steps.tolist()
    np.testing.assert_allclose(ra[:, 1], 60.0 * np.exp(-steps / 400.0) + 40.0 / 3)  # the mean of 12, 15, 13
    band = first.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(60.0 * np.exp(-960 / 400.0) + 12.0) and band.max() == pytest.approx(60.0 + 15.0)
    assert lines["FixMatch (RA), paper 13.81"][:, 1].tolist() == [13.81, 13.81]  # the published mean, dashed
    assert lines["FixMatch (CTA) (1 fold)"][:, 1].tolist() == (60.0 * np.exp(-np.arange(0, 2048, 64) / 400.0) + 11.0).tolist()
    assert [text.get_text() for text in empty.texts] == ["no finished runs"]
    assert "Supervised only (mean of 2 folds, min–max band)" in _lines(digits)


def test_error_vs_labels_plots_the_measured_means_against_the_published_ones(tmp_path):
    cells = [CellResult("cifar10", n, m, {1: e, 2: e + 1.0}, (1, 2), (20,), None, None)
             for n, e in ((40, 12.0), (250, 6.0), (4000, 4.5)) for m in ("fixmatch_ra", "fixmatch_cta")]
    cells.append(CellResult("svhn", 40, "fixmatch_ra", {1: 4.0}, (1, 2), (20,), None, None))
    figure = plot_error_vs_labels(cells, PUBLISHED, tmp_path / "error_vs_labels.png")
    assert_png(tmp_path / "error_vs_labels.png", (960, 360))
    lines = _lines(figure.axes[0])
    assert lines["FixMatch (RA) (ours)"].tolist() == [[40, 12.5], [250, 6.5], [4000, 5.0]]
    assert lines["FixMatch (RA) (paper)"].tolist() == [[40, 13.81], [250, 5.07], [4000, 4.26]]
    assert _lines(figure.axes[1])["FixMatch (RA) (ours)"].tolist() == [[40, 4.0]]  # one fold of two


def test_the_methods_figure_shows_each_methods_mean_its_folds_and_the_published_value(tmp_path):
    cells = [CellResult("cifar10", 40, "fixmatch_ra", {1: 12.0, 2: 14.0}, (1, 2), (20,), None, None),
             CellResult("cifar10", 40, "uda", {1: 30.0, 2: 26.0}, (1, 2), (20,), None, None),
             CellResult("cifar10", 40, "mine", {}, (1, 2), (20,), None, None)]
    figure = plot_methods(cells, PUBLISHED, tmp_path / "methods.png")
    assert_png(tmp_path / "methods.png", (480, 360))
    axes = figure.axes[0]
    assert [bar.get_height() for bar in axes.patches] == [13.0, 28.0]  # the means; "mine" has no fold yet
    dots = [line.get_xydata().tolist() for line in axes.get_lines() if line.get_marker() == "o"]
    assert dots == [[[0, 12.0], [0, 14.0]], [[1, 30.0], [1, 26.0]]]
    squares = [line.get_xydata().tolist() for line in axes.get_lines() if line.get_marker() == "s"]
    assert squares == [[[0, 13.81]], [[1, 29.05]]]  # FixMatch (RA) and UDA at CIFAR-10@40 in published.yaml
    assert [label.get_text() for label in axes.get_xticklabels()] == ["FixMatch (RA)", "UDA", "mine"]


def test_training_signals_plot_the_mask_rate_and_the_pseudo_label_accuracy_in_percent(tmp_path):
    def rate(offset):
        steps = np.arange(0, 1024, 32)
        return Curve(steps, 1.0 - 0.5 * np.exp(-steps / 300.0) - offset)

    mask = {("digits", 20, "fixmatch_ra"): {1: rate(0.0), 2: rate(0.05)}, ("digits", 20, "supervised"): {}}
    accuracy = {("digits", 20, "fixmatch_ra"): {1: rate(0.02), 2: rate(0.03)}, ("digits", 20, "supervised"): {}}
    figure = plot_training_signals(mask, accuracy, PUBLISHED, tmp_path / "signals.png")
    assert_png(tmp_path / "signals.png", figure_size_px(1, rows_per_panel=2))
    assert figure_size_px(1, rows_per_panel=2) == (480, 720)
    steps = np.arange(0, 1024, 32)
    label = "FixMatch (RA) (mean of 2 folds, min–max band)"
    np.testing.assert_allclose(_lines(figure.axes[0])[label][:, 1], 100 * (1.0 - 0.5 * np.exp(-steps / 300.0) - 0.025))
    np.testing.assert_allclose(_lines(figure.axes[1])[label][:, 1], 100 * (1.0 - 0.5 * np.exp(-steps / 300.0) - 0.025))
