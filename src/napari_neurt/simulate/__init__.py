"""Simulated calcium-imaging recordings with ground truth.

`two_photon` and `miniscope` return a `SimulatedRecording`: a uint16 movie, its label image
and the truth behind it (spikes, ΔF/F, noise-free fluorescence, ensembles). The same seed
gives identical arrays.

The generative model, from spikes to pixels:

1. Spikes (`ensemble_spikes`): private Poisson events per neuron plus the events of spatially
   clustered ensembles, each event a short burst (`Activity`).
2. ΔF/F (`spikes_to_dff`): spikes convolved with the indicator's double-exponential response,
   averaged over each frame, then mildly saturated (`Indicator`, `INDICATORS`); a recording
   starts in the steady state of its neurons' firing, not from rest, since it is a window of
   ongoing activity.
3. Cells (`place_cells`, `cell_footprints`): irregular ellipses with a dimmer nucleus, blurred by
   the point-spread function; the cell's light is ``F0 * drift(t) * (1 + ΔF/F)``.
4. Neuropil (`population_field`): a smooth field following the local mean ΔF/F of the imaged
   cells and of unseen neurons; partly hidden behind somata in two-photon imaging.
5. Background (`vessel_map`): static autofluorescence, with dark blood vessels, and vignetting.
6. Drift (`drift_trace`): bleaching times a slow random drift, shared by all light.
7. Detection (`detect`): Poisson photon counts, gain, Gaussian read noise, offset, uint16.

`Imaging` holds the optical, tissue and detector settings; `TWO_PHOTON` and `MINISCOPE` are the
presets. Every step is vectorised: the movie is ``traces (T, N) @ footprints (N, pixels)`` plus
the smooth fields, rendered a chunk of frames at a time; there is no loop over frames.

`INDICATORS` tabulates the kinetics of OGB-1, GCaMP6s/m/f, jGCaMP7s/f and jGCaMP8s/m/f, with
sources. The default `two_photon()` (GCaMP6f, 30 Hz, an active population firing about 3 spikes
per second) is a good but honest recording: a soma's mean has about 2 % shot noise per frame, a
single spike peaks at about 9 times that, and neuropil and background add about half a soma's
resting light to its pixels (see `TWO_PHOTON`). The mean of the movie in each label correlates
with the true fluorescence at r > 0.9 for every cell (0.95 at worst, median 0.99; with suite2p's
neuropil subtraction 0.96 at worst). `miniscope()` is much harder: out-of-focus light several
times brighter than the cells, which are blurred by a 3.5 um point-spread function.

For training, where thousands of neurons in many recordings are needed and a movie would only
cost time, `population` simulates the extracted traces directly (photon and read noise,
neuropil residue, drift and bleaching, dropped frames; `TraceImaging`, `TWO_PHOTON_TRACES`,
`MINISCOPE_TRACES`) with the same spikes and kinetics. `random_condition` draws a recording
condition (indicator, two-photon or miniscope, 3-30 Hz, quality, activity) and
`training_recordings` streams varied recordings, a share of them as denoised traces
(`denoised`). `cohort` simulates wild-type and AD-like animals, the latter with hyperactive
neurons around plaques and weaker ensembles (`Phenotype`), returning the affected neurons;
`write_cohort` saves them with a manifest for fine-tuning.
"""

from .activity import Activity, assign_ensembles, ensemble_spikes
from .anatomy import cell_footprints, footprints_to_labels, place_cells, vessel_map
from .cohort import (
    AD_LIKE,
    COHORT_CONDITION,
    GROUPS,
    WILD_TYPE,
    CohortAnimal,
    Phenotype,
    cohort,
    write_cohort,
)
from .conditions import Condition, denoised, random_condition, training_recordings
from .imaging import (
    MINISCOPE,
    TWO_PHOTON,
    Imaging,
    SmoothField,
    detect,
    drift_trace,
    population_field,
    smooth_texture,
    vignette,
)
from .kinetics import INDICATORS, Indicator, calcium_kernel, get_indicator, spikes_to_dff
from .population import (
    MINISCOPE_TRACES,
    TWO_PHOTON_TRACES,
    TraceImaging,
    drop_frames,
    local_mean,
    place_neurons,
    population,
)
from .recordings import SimulatedRecording, generate, miniscope, two_photon

__all__ = [
    "AD_LIKE",
    "COHORT_CONDITION",
    "GROUPS",
    "INDICATORS",
    "MINISCOPE",
    "MINISCOPE_TRACES",
    "TWO_PHOTON",
    "TWO_PHOTON_TRACES",
    "WILD_TYPE",
    "Activity",
    "CohortAnimal",
    "Condition",
    "Imaging",
    "Indicator",
    "Phenotype",
    "SimulatedRecording",
    "SmoothField",
    "TraceImaging",
    "assign_ensembles",
    "calcium_kernel",
    "cell_footprints",
    "cohort",
    "denoised",
    "detect",
    "drift_trace",
    "drop_frames",
    "ensemble_spikes",
    "footprints_to_labels",
    "generate",
    "get_indicator",
    "local_mean",
    "miniscope",
    "place_cells",
    "place_neurons",
    "population",
    "population_field",
    "random_condition",
    "smooth_texture",
    "spikes_to_dff",
    "training_recordings",
    "two_photon",
    "vessel_map",
    "vignette",
    "write_cohort",
]
