"""Command line: `ntkspec sweep`, `spectrum`, `analyze`, `plot`, `pack`, `bench`.

A thin Typer layer: each command parses its options and calls one library function of the experiment
layer (`sweep.run_sweep`, `measure.init_spectrum`, `analysis.analyze_store`, `plots.plot_store`,
`store.pack`). It owns every Rich table and progress bar: the library prints nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="ntkspec",
    help="Spectra of the empirical neural tangent kernel of real networks, during training.",
    no_args_is_help=True,
    add_completion=False,
)


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        message = f"expected integers separated by commas, got {text!r}"
        raise typer.BadParameter(message, param_hint=option) from error


@contextlib.contextmanager
def _user_errors(console: Console) -> Iterator[None]:
    """Bad input (a `ValueError` naming the argument) -> its message and exit status 2, no traceback."""
    try:
        yield
    except ValueError as error:
        console.print(f"[red]Error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from error


def _default_figures(store: Path) -> Path:
    from ntkspec.experiments.store import stem

    return store.with_name(stem(store) + "-figures")


@app.command()
def sweep(
    config: Annotated[
        str | None,
        typer.Argument(help="TOML config file, or a built-in config name. Default: quickstart."),
    ] = None,
    widths: Annotated[str | None, typer.Option(help="Override widths, e.g. 16,64,256.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Override the number of seeds.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the number of epochs.")] = None,
    depth: Annotated[int | None, typer.Option(help="Override the number of Dense layers.")] = None,
    store: Annotated[Path | None, typer.Option(help="Store path (default runs/NAME.zarr).")] = None,
    task: Annotated[str, typer.Option(help="Run only runs i mod n of the sweep, as 'i/n'.")] = "0/1",
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding the datasets.")] = None,
    analyze: Annotated[
        bool, typer.Option(help="Analyse and plot the store once the whole sweep is complete.")
    ] = True,
    figures: Annotated[Path | None, typer.Option(help="Figure folder (default next to store).")] = None,
    formats: Annotated[str, typer.Option(help=FORMATS_HELP)] = "png,pdf",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    mesh: Annotated[str | None, typer.Option(help=MESH_HELP)] = None,
    distributed: Annotated[
        bool, typer.Option(help="Call jax.distributed.initialize() first (one process per host).")
    ] = False,
) -> None:
    """Train every run of a sweep and record NTK spectra in a Zarr store; resumes where it stopped."""
    from ntkspec.experiments.config import load_config
    from ntkspec.experiments.store import read_run
    from ntkspec.experiments.sweep import run_sweep

    console = Console(soft_wrap=True)
    with _user_errors(console):
        cfg = load_config(
            config,
            widths=_ints(widths, "--widths"),
            seeds=seeds,
            epochs=epochs,
            depth=depth,
            store=None if store is None else str(store),
            data_dir=None if data_dir is None else str(data_dir),
        )
        figure_formats = _formats(formats)
        with _progress_bar(console, enabled=progress) as report:
            summary = run_sweep(cfg, task=task, progress=report, mesh=_mesh(mesh, distributed))
    console.print(
        f"[bold]{cfg.name}[/bold]: {len(summary.done)} run(s) trained, {len(summary.skipped)} "
        f"already finished, {len(summary.busy)} held by another process, {len(summary.diverged)} "
        f"diverged, {len(summary.failed)} failed, in {summary.seconds:.1f} s."
    )
    if summary.corrupt:
        console.print(
            f"  no longer read back, so trained again: {', '.join(summary.corrupt)}", highlight=False
        )
    if summary.resumed:
        shown = ", ".join(summary.resumed)
        console.print(f"  went on from their checkpoints (run@epoch): {shown}", highlight=False)
    if summary.busy:
        console.print(f"  left to the process holding them: {', '.join(summary.busy)}", highlight=False)
    for name in (*summary.diverged, *summary.failed):
        attrs, _ = read_run(summary.store, name)
        console.print(f"  {name} {attrs['status']}: {attrs['message']}", highlight=False)
    console.print(f"Store: {summary.store.resolve()}")
    if summary.failed:
        raise typer.Exit(1)
    if not summary.complete:
        console.print("Other runs of this sweep are not finished yet (other --task values?).")
        return
    if analyze:
        with _user_errors(console):
            analysis = _analyze(summary.store, None, console)
            _plot(
                summary.store, figures or _default_figures(summary.store), figure_formats, console, analysis
            )


@contextlib.contextmanager
def _progress_bar(console: Console, enabled: bool) -> Iterator:
    """A callback for `run_sweep` drawing a Rich progress bar; the bar appears with the first run to
    train, so a finished store shows none."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
    tasks: dict[str, int] = {}

    def report(where) -> None:
        if not tasks:
            bar.start()
        name = where.run.name
        if name not in tasks:
            tasks[name] = bar.add_task(f"[{where.number}/{where.total}] {name}", total=where.epochs)
        bar.update(tasks[name], completed=where.epoch)

    try:
        yield report
    finally:
        if tasks:
            bar.stop()


def _analyze(store: Path, out_dir: Path | None, console: Console, wide: bool = False):
    from ntkspec.experiments import report
    from ntkspec.experiments.analysis import analyze_store

    analysis = analyze_store(store)
    console.print(report.rich(analysis, width=console.width, wide=wide))
    for path in analysis.write(out_dir):
        console.print(f"Analysis: {path.resolve()}")
    return analysis


def _formats(text: str) -> tuple[str, ...]:
    """'png,pdf' -> ('png', 'pdf'): the figure formats of --formats, checked (before any training)."""
    from ntkspec.experiments.plots import check_formats

    formats = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    check_formats(formats)
    return formats


def _plot(store: Path, out_dir: Path, formats: tuple[str, ...], console: Console, analysis=None) -> None:
    from ntkspec.experiments.analysis import analyze_store
    from ntkspec.experiments.plots import missing_figures, plot_store

    analysis = analysis if analysis is not None else analyze_store(store)
    paths = plot_store(store, out_dir, analysis=analysis, formats=formats)
    console.print(f"Figures ({len(paths)}) in {Path(out_dir).resolve()}:")
    for path in paths:
        console.print(f"  {path}")
    if analysis.runs:
        for name, why in missing_figures(analysis).items():
            console.print(f"  not drawn: {name}: {why}")


STORE_HELP = "Sweep store: a .zarr folder or a packed .zarr.zip."
FORMATS_HELP = "Figure formats, comma-separated (any matplotlib writes: png, pdf, svg, ...)."
MESH_HELP = "Device mesh, e.g. data=4,model=2 ('all': every device on data)."


def _mesh(spec: str | None, distributed: bool):
    """The device mesh from --mesh, after joining the other hosts when --distributed."""
    if distributed:
        import jax

        jax.distributed.initialize()
    if spec is None:
        return None
    from ntkspec.sharding import make_mesh

    return make_mesh(spec)


@app.command()
def spectrum(
    width: Annotated[int, typer.Option(help="Hidden-layer width.")] = 256,
    depth: Annotated[int, typer.Option(help="Number of Dense layers.")] = 3,
    n_ntk: Annotated[int, typer.Option(help="Samples in the NTK batch.")] = 128,
    dataset: Annotated[str, typer.Option(help="digits, mnist, fashion_mnist or cifar10.")] = "digits",
    model: Annotated[str, typer.Option(help="mlp or cnn.")] = "mlp",
    method: Annotated[str, typer.Option(help="auto, exact or stochastic.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the data draw, init and probes.")] = 0,
    top_k: Annotated[int, typer.Option(help="Top eigenvalues to show.")] = 5,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding the datasets.")] = None,
    mesh: Annotated[str | None, typer.Option(help=MESH_HELP)] = None,
) -> None:
    """Spectrum of the NTK of one freshly initialised model on a held-out batch."""
    from ntkspec.experiments.config import SweepConfig
    from ntkspec.experiments.measure import init_spectrum

    with _user_errors(Console(soft_wrap=True)):
        settings = {"depth": depth, "n_ntk": n_ntk, "dataset": dataset, "model": model, "method": method}
        settings.update(
            {"top_k": top_k, "widths": [width], "data_dir": None if data_dir is None else str(data_dir)}
        )
        kind = {"kind": "data_size", "data_sizes": [1]} if model == "cnn" else {}
        raw, cosine = init_spectrum(
            SweepConfig.from_dict({**settings, **kind}), width, seed, _mesh(mesh, False)
        )
    what = "the CNN" if model == "cnn" else f"a {depth}-layer MLP of width {width}"
    table = Table(title=f"NTK at initialisation of {what} on {n_ntk} {dataset} samples")
    table.add_column("quantity")
    table.add_column("NTK", justify="right")
    table.add_column("cosine NTK", justify="right")

    def pm(value: float, stderr: float) -> str:
        return f"{value:.6g}" + (f" ± {stderr:.2g}" if stderr else "")

    def top(values: np.ndarray) -> str:
        return ", ".join(f"{v:.4g}" for v in values[:top_k])

    table.add_row("kernel size", str(raw.size), str(cosine.size))
    table.add_row("trace", pm(raw.trace, raw.trace_stderr), pm(cosine.trace, cosine.trace_stderr))
    table.add_row("mean diagonal", f"{raw.mean_diagonal:.6g}", f"{cosine.mean_diagonal:.6g}")
    table.add_row("entropy", pm(raw.entropy, raw.entropy_stderr), pm(cosine.entropy, cosine.entropy_stderr))
    table.add_row(
        "effective rank",
        pm(raw.effective_rank, raw.effective_rank_stderr),
        pm(cosine.effective_rank, cosine.effective_rank_stderr),
    )
    table.add_row("top eigenvalues", top(raw.eigenvalues), top(cosine.eigenvalues))
    table.add_row("method", raw.method, cosine.method)
    table.add_row("seconds", f"{raw.seconds:.3f}", f"{cosine.seconds:.3f}")
    Console().print(table)


@app.command()
def analyze(
    store: Annotated[Path, typer.Argument(help=STORE_HELP, exists=True)],
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for the CSV/JSON tables (default: the store's).")
    ] = None,
    wide: Annotated[bool, typer.Option(help="One table with every column, however wide.")] = False,
) -> None:
    """Derived quantities and power-law fits of a sweep store (table also written as CSV and JSON)."""
    console = Console(soft_wrap=True)
    with _user_errors(console):
        _analyze(store, out_dir, console, wide)


@app.command()
def plot(
    store: Annotated[Path, typer.Argument(help=STORE_HELP, exists=True)],
    out_dir: Annotated[Path | None, typer.Option(help="Figure folder (default next to store).")] = None,
    formats: Annotated[str, typer.Option(help=FORMATS_HELP)] = "png,pdf",
) -> None:
    """Figures of a sweep store."""
    console = Console(soft_wrap=True)
    with _user_errors(console):
        _plot(store, out_dir or _default_figures(store), _formats(formats), console)


@app.command()
def compare(
    store_a: Annotated[Path, typer.Argument(help=STORE_HELP, exists=True)],
    store_b: Annotated[Path, typer.Argument(help=STORE_HELP, exists=True)],
) -> None:
    """The power-law exponents two sweeps share (e.g. two depths), and their difference with a 95 % CI;
    where their fitted ranges differ, again over the range both share."""
    from ntkspec.experiments.analysis import analyze_store
    from ntkspec.experiments.analysis import compare as compare_analyses

    console = Console(soft_wrap=True)
    with _user_errors(console):
        a, b = analyze_store(store_a), analyze_store(store_b)
        table = Table(title=f"exponents: A = {store_a.name}, B = {store_b.name}")
        for column in ("quantity", "A [95 % CI] (range)", "B [95 % CI] (range)", "A − B [95 % CI]"):
            table.add_column(column)

        def law(fit) -> str:
            span = f"{fit.x_min:g}-{fit.x_max:g}"
            return f"{fit.exponent:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}] ({span})"

        for row in compare_analyses(a, b):
            diff, low, high = row.difference
            quantity = f"{row.quantity} (shared range)" if row.shared_range else row.quantity
            table.add_row(quantity, law(row.a), law(row.b), f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]")
        console.print(table)


@app.command()
def pack(
    store: Annotated[Path, typer.Argument(help="Sweep store folder.", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="The Zip file to write (default STORE.zip).")] = None,
    remove: Annotated[bool, typer.Option(help="Delete the folder once the Zip file is written.")] = False,
) -> None:
    """Pack a store into one `.zarr.zip` file (for version control); it reads as the folder.

    A sweep still running can be packed: its runs in training, and the checkpoints of their
    ensembles, are left out and named (the folder goes on from its checkpoints; a copy unpacked
    from the Zip file trains them again from epoch 0).
    """
    import shutil

    from ntkspec.experiments.store import pack as pack_store

    console = Console(soft_wrap=True)
    with _user_errors(console):
        path, left_out = pack_store(store, out)
    console.print(f"Packed: {path.resolve()} ({path.stat().st_size / 2**20:.1f} MiB)")
    if left_out:
        console.print(
            f"Left out {len(left_out)} runs in training (not in the Zip file; the folder goes on with them): "
            + ", ".join(left_out)
        )
    if remove and left_out:
        console.print(f"[red]Not removed:[/red] {store} has runs in training.")
        raise typer.Exit(1)
    if remove:
        shutil.rmtree(store)


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option(help="Small sizes: about 3 minutes instead of 14 (2 CPU cores, anchors reused).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default benchmarks/results/suite[-quick]).")
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Sections, comma-separated: work-precision, width, kernel-size, anchors."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with mnist/ for the full run's MNIST NTKs (default ../shared/data)."),
    ] = None,
) -> None:
    """Run the benchmark suite (`python -m benchmarks run`) of a source checkout."""
    import subprocess
    import sys

    import ntkspec

    root = Path(ntkspec.__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        Console(stderr=True).print(
            f"[red]Error:[/red] no benchmarks folder next to the ntkspec package (looked in {root}); "
            "the suite ships with the source only: clone the repository and run `ntkspec bench` from an "
            "editable install (`pip install -e .`), or `python -m benchmarks run` in the checkout.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    command = [sys.executable, "-m", "benchmarks", "run"]
    command += ["--quick"] * quick
    command += [] if out is None else ["--out", str(out.resolve())]
    command += [] if only is None else ["--only", only]
    command += [] if data_dir is None else ["--data-dir", str(data_dir.resolve())]
    raise typer.Exit(subprocess.run(command, cwd=root).returncode)
