"""Figures: each figure of a synthetic sweep is written as non-empty PNG and PDF; no state leaks."""

import matplotlib as mpl
import pytest
import zarr
from _synthetic import write_sweep
from matplotlib.figure import Figure

from ntkspec.experiments.analysis import analyze_store
from ntkspec.experiments.plots import dynamics_figure, plot_store, scaling_figure, transition_figure


def test_plot_store_writes_png_and_pdf(tmp_path):
    store = write_sweep(tmp_path / "mlp.zarr", values=(16, 64, 256, 1024, 4096), seeds=(0, 1), n_records=15)
    rc_before = dict(mpl.rcParams)
    paths = plot_store(store, tmp_path / "figures", analysis=analyze_store(store, n_boot=20))
    assert dict(mpl.rcParams) == rc_before
    assert sorted(p.name for p in paths) == sorted(
        f"mlp-{name}.{fmt}" for name in ("dynamics", "scaling", "transition") for fmt in ("png", "pdf")
    )
    for path in paths:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")
        assert path.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("kind", "values", "label"),
    [
        ("data_size", (50, 100, 200), "training samples"),
        ("noise", (0.0, 0.5), "noisy-copy fraction"),
    ],
)
def test_figures_of_other_sweeps(tmp_path, kind, values, label):
    store = write_sweep(tmp_path / "s.zarr", kind=kind, values=values, seeds=(0,), n_records=8)
    analysis = analyze_store(store, n_boot=10)
    assert not analysis.breakpoints  # too few sizes for a breakpoint; none for noise sweeps
    for build in (dynamics_figure, scaling_figure, transition_figure):
        figure = build(analysis)
        assert isinstance(figure, Figure)
        labels = [text for ax in figure.axes for text in (ax.get_xlabel(), ax.get_ylabel())]
        assert label in labels


def test_plot_store_without_complete_runs(tmp_path):
    store = write_sweep(tmp_path / "empty.zarr", values=(16,), seeds=(0,), n_records=8)
    zarr.open_group(str(store / "w16_s0"), mode="r+").attrs["status"] = "diverged"
    with pytest.raises(ValueError, match="complete run"):
        plot_store(store, tmp_path / "figures")
    with pytest.raises(ValueError, match=r"`formats`: got \['png', 'tex'\], expected figure formats"):
        plot_store(store, tmp_path / "figures", formats=("png", "tex"))
