"""The experiment layer: sweeps of training runs with NTK spectra recorded, stored, read and analysed.

One module per concept, each using only those listed before it:

records  the record schema, the per-run attributes and the table of sweep kinds
checkpoint  a training in progress as named host arrays, and back
ensemble one network's computation over an ensemble's stacked networks (vmapped or unrolled)
config   TOML -> validated `SweepConfig` -> runs, and every PRNG key of a run
measure  one recording epoch: operator -> spectra -> alignment -> `Record`
train    full-batch or minibatch optimisation of one network or of an ensemble (one program), the
         measurement passed in
store    the Zarr layout: writer (one owner per run), reader, `open_sweep`, packing
sweep    orchestration of the runs of a config, progress through a callback
summaries, fits, report, analysis   per-run derivations, statistics, rendering, their orchestration
plots    figures drawn from an analysis
"""

from ntkspec.experiments.store import open_sweep as open_sweep
