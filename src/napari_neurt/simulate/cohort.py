"""A two-group cohort, "wild type" and "AD-like", with the affected neurons known."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..recording import Recording
from ._random import log_normal
from .activity import Activity
from .conditions import Condition
from .kinetics import get_indicator
from .population import _SOMA_DIAMETER_UM, _field_um, _shape_px, place_neurons, population

WILD_TYPE = "wild type"
AD_LIKE = "AD-like"
GROUPS = (WILD_TYPE, AD_LIKE)

# The default cohort's population fires sparsely, as cortical L2/3 does (below 1 spike/s on
# average, with a wide spread of rates), so that hyperactive neurons stand out; its ensembles are
# few and broad (about three per 300 neurons), so that the mean pairwise correlation is a
# meaningful, if noisy, measure of synchrony (about 0.07 in wild-type traces at 300 neurons x
# 3000 frames, about half of it from the drift and bleaching all neurons share: 0.04 with the
# drift divided out).
COHORT_CONDITION = Condition(
    activity=Activity(
        rate_hz=0.3,
        rate_spread=0.5,
        ensembles_per_mm2=20.0,
        ensemble_radius_um=100.0,
        event_rate_hz=0.15,
    )
)
"""The default condition of `cohort`: two-photon GCaMP6f at 30 Hz, a sparsely firing population
with broad ensembles."""

# Animal-to-animal variability, the same in both groups (see `cohort`).
_N_NEURONS_RANGE = (0.7, 1.3)  # times n_neurons, uniform
_RATE_SPREAD = 0.3  # log s.d. of the median private event rate
_EVENT_RATE_SPREAD = 0.3  # log s.d. of the ensemble event rate
_COUPLING_RANGE = (0.6, 1.0)  # times the condition's coupling, uniform
_PHOTON_SPREAD = 0.4  # log s.d. of the photon budget (SNR changes with its square root)
_EXPRESSION_SPREAD = 0.2  # log s.d. of the single-spike ΔF/F (indicator expression)
_FEWEST_NEURONS_FIELD = 4  # the field of view holds at least this many neurons' share of space


@dataclass(frozen=True)
class Phenotype:
    """The AD-like phenotype at full strength (``effect=1`` in `cohort`).

    A stylised version of two findings in amyloid-depositing mice, not a quantitative model:
    neurons near amyloid plaques are hyperactive (Busche et al. 2008, Science 321:1686: in
    APP23xPS45 mice about a fifth of cortical neurons were hyperactive, and only near plaques;
    the 60 um reach and the 3-fold rate are our choices), and activity is less coordinated
    (Stern et al. 2004, J Neurosci 24:4535: disrupted synaptic integration near plaques; Busche
    et al. 2015, Nat Neurosci 18:1623: loss of long-range slow-wave coherence). Silent,
    hypoactive neurons, also reported by Busche et al. 2008, are not modelled.

    Attributes
    ----------
    plaques_per_mm2
        Density of plaques in the field of view (Poisson, at least one per animal).
    plaque_radius_um
        Radius of a plaque's dense core, where no soma lies.
    hyperactive_radius_um
        Neurons whose centre lies within this distance of a plaque's edge are affected.
    rate_gain
        Factor on an affected neuron's private event rate.
    coupling_loss
        Fraction of `Activity.coupling` lost by every neuron of an AD-like animal: that share of
        its ensemble bursts fall at random times instead (same spikes, less synchrony).
    """

    plaques_per_mm2: float = 20.0
    plaque_radius_um: float = 10.0
    hyperactive_radius_um: float = 60.0
    rate_gain: float = 3.0
    coupling_loss: float = 0.35


@dataclass(eq=False)
class CohortAnimal:
    """One simulated animal of a `cohort`.

    Attributes
    ----------
    animal
        Identifier, blind to the group ("animal-07").
    group
        "wild type" or "AD-like".
    recording
        Its recording (`population` traces, truth in ``metadata``).
    affected
        bool (N,): the neurons carrying the phenotype (all False in a wild-type animal).
    plaques
        float64 (P, 2) plaque centres (y, x) in pixels, like the centroids; (0, 2) in a
        wild-type animal.
    """

    animal: str
    group: str
    recording: Recording
    affected: np.ndarray
    plaques: np.ndarray

    def __repr__(self) -> str:
        return (
            f"CohortAnimal({self.animal}, {self.group}, {self.recording.n_neurons} neurons, "
            f"{int(self.affected.sum())} affected, {len(self.plaques)} plaques)"
        )


def cohort(
    n_per_group: int,
    *,
    seed: int = 0,
    condition: Condition | None = None,
    n_neurons: int = 300,
    n_frames: int = 3000,
    effect: float = 1.0,
    phenotype: Phenotype = Phenotype(),
) -> list[CohortAnimal]:
    """Simulate `n_per_group` wild-type and as many AD-like animals, one recording each.

    Every animal is recorded under the same `condition` (one indicator, microscope and frame
    rate, as in one study), but animals differ as real ones do, in both groups alike: number of
    neurons (0.7-1.3 times `n_neurons`), median private event rate (log s.d. 0.3), ensemble
    event rate (log s.d. 0.3), ensemble coupling (0.6-1 times the condition's), photon budget
    hence SNR (log s.d. 0.4) and indicator expression, i.e. ΔF/F per spike (log s.d. 0.2).

    AD-like animals carry the `phenotype`, scaled by `effect` (0: none, the groups differ only
    by the plaques' space; 1: as documented in `Phenotype`):

    - plaques: ``Poisson(plaques_per_mm2 * area)`` (at least one) at uniformly random places;
      no soma within ``plaque_radius_um`` of a plaque's centre;
    - affected neurons: those within ``hyperactive_radius_um`` of a plaque's edge (with the
      defaults a quarter of the neurons on average, from 5 to 45 % in an animal; Busche et al.
      2008 found 21 % hyperactive); their private event rate is multiplied by
      ``1 + effect * (rate_gain - 1)`` (3 at ``effect=1``: about 2.6 times the spikes of the
      unaffected neurons, ensemble events included, from 2 to 3 in an animal);
    - lower synchrony, in every neuron: the ensemble coupling is multiplied by
      ``1 - effect * coupling_loss`` (0.65 at ``effect=1``): a further 35 % of ensemble
      bursts fall at random times; the spike count is unchanged.

    Parameters
    ----------
    n_per_group
        Animals per group.
    seed
        Seed of everything; animal ``k`` depends on `seed`, ``k`` and its group only.
    condition
        The recording condition; default `COHORT_CONDITION`: two-photon GCaMP6f at 30 Hz, a
        sparsely firing population with broad ensembles.
    n_neurons
        Mean number of neurons per animal.
    n_frames
        Frames per recording.
    effect
        Strength of the phenotype (>= 0).
    phenotype
        The phenotype at ``effect=1``.

    Returns
    -------
    list of CohortAnimal
        In the order of their identifiers, which are blind to the groups (assigned at random,
        balanced). Each recording's ``metadata`` also holds "animal", "group", "affected" and
        "plaques".
    """
    # `not effect >= 0` also catches NaN, which failed later in numpy ("lam value too large")
    if n_per_group < 1 or n_neurons < 1 or not effect >= 0:
        raise ValueError(
            "need n_per_group >= 1, n_neurons >= 1 and effect >= 0; "
            f"got {n_per_group}, {n_neurons}, {effect}"
        )
    condition = COHORT_CONDITION if condition is None else condition
    root = np.random.SeedSequence(seed)
    streams = [
        np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(k,)))
        for k in range(2 * n_per_group + 1)
    ]
    groups = streams[0].permutation(np.repeat(GROUPS, n_per_group))
    width = len(str(2 * n_per_group))
    return [
        _animal(
            f"animal-{k:0{width}d}",
            str(group),
            rng,
            condition=condition,
            n_neurons=n_neurons,
            n_frames=n_frames,
            effect=effect if group == AD_LIKE else 0.0,
            phenotype=phenotype,
            plaques=group == AD_LIKE,
        )
        for k, (group, rng) in enumerate(zip(groups, streams[1:], strict=True), start=1)
    ]


def write_cohort(folder: str | os.PathLike, animals: list[CohortAnimal]) -> Path:
    """Write each animal as ``<animal>.npz`` and a ``manifest.csv`` listing them; return its path.

    An ``.npz`` holds what `napari_neurt.io.read_recording` reads (traces, centroids,
    neuron_ids, frame_rate, pixel_size_um, trace_kind) and the truth: affected (bool (N,)) and
    plaques (float64 (P, 2), pixels). The manifest has the columns path (relative to the
    manifest's folder), animal and label (the group). Every file is written atomically.
    """
    from ..io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for animal in animals:
        recording = animal.recording
        name = f"{animal.animal}.npz"
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as file:
            np.savez(
                file,
                traces=recording.traces,
                centroids=recording.centroids,
                neuron_ids=recording.neuron_ids,
                frame_rate=np.float64(recording.frame_rate),
                pixel_size_um=np.float64(recording.pixel_size_um),
                trace_kind=np.str_(recording.metadata.get("trace_kind", "fluorescence")),
                affected=np.asarray(animal.affected, dtype=bool),
                plaques=np.asarray(animal.plaques, dtype=np.float64).reshape(-1, 2),
            )
        rows.append({"path": name, "animal": animal.animal, "label": animal.group})
    manifest = folder / "manifest.csv"
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "animal", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _animal(
    animal: str,
    group: str,
    rng: np.random.Generator,
    *,
    condition: Condition,
    n_neurons: int,
    n_frames: int,
    effect: float,
    phenotype: Phenotype,
    plaques: bool,
) -> CohortAnimal:
    imaging, activity = condition.imaging, condition.activity
    indicator = get_indicator(condition.indicator)
    n_neurons = max(1, round(n_neurons * rng.uniform(*_N_NEURONS_RANGE)))
    photons = log_normal(imaging.photons, _PHOTON_SPREAD, 1, rng)[0]
    imaging = replace(imaging, photons=float(photons))
    indicator = replace(
        indicator,
        dff_per_spike=float(log_normal(indicator.dff_per_spike, _EXPRESSION_SPREAD, 1, rng)[0]),
    )
    coupling = activity.coupling * rng.uniform(*_COUPLING_RANGE)
    activity = replace(
        activity,
        rate_hz=float(log_normal(activity.rate_hz, _RATE_SPREAD, 1, rng)[0]),
        event_rate_hz=float(log_normal(activity.event_rate_hz, _EVENT_RATE_SPREAD, 1, rng)[0]),
        coupling=float(coupling * max(1.0 - effect * phenotype.coupling_loss, 0.0)),
    )

    # a field sized for one or two somata can have no room left beside a plaque's core
    field_um = _field_um(None, max(n_neurons, _FEWEST_NEURONS_FIELD), imaging.cells_per_mm2)
    area_mm2 = field_um[0] * field_um[1] * 1e-6
    n_plaques = max(1, rng.poisson(phenotype.plaques_per_mm2 * area_mm2)) if plaques else 0
    plaques_um = rng.uniform((0.0, 0.0), field_um, size=(n_plaques, 2))
    positions_um = place_neurons(
        n_neurons,
        field_um,
        rng=rng,
        imaging=imaging,
        forbidden=_plaque_cores(plaques_um, field_um, imaging.pixel_size_um, phenotype),
    )
    reach_um = phenotype.plaque_radius_um + phenotype.hyperactive_radius_um
    affected = _near(positions_um, plaques_um, reach_um)
    rate_scale = np.where(affected, 1.0 + effect * (phenotype.rate_gain - 1.0), 1.0)

    recording = population(
        n_frames=n_frames,
        frame_rate=condition.frame_rate,
        indicator=indicator,
        seed=int(rng.integers(2**32)),
        imaging=imaging,
        activity=activity,
        field_um=field_um,
        positions_um=positions_um,
        rate_scale=rate_scale,
    )
    plaques_px = plaques_um / imaging.pixel_size_um
    recording.source = f"simulated {group} {animal}: {recording.source}"
    recording.metadata.update(
        animal=animal, group=group, affected=affected, plaques=plaques_px, effect=effect
    )
    return CohortAnimal(animal, group, recording, affected, plaques_px)


def _plaque_cores(plaques_um, field_um, pixel_size_um, phenotype) -> np.ndarray:
    """Pixels where a soma's centre would overlap a plaque's core."""
    height, width = _shape_px(field_um, pixel_size_um)
    y = (np.arange(height) + 0.5) * pixel_size_um
    x = (np.arange(width) + 0.5) * pixel_size_um
    reach2 = (phenotype.plaque_radius_um + _SOMA_DIAMETER_UM / 2) ** 2
    forbidden = np.zeros((height, width), dtype=bool)
    for plaque_y, plaque_x in plaques_um:
        forbidden |= (y[:, None] - plaque_y) ** 2 + (x[None, :] - plaque_x) ** 2 < reach2
    return forbidden


def _near(positions: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Whether each position lies within `radius` of any centre."""
    if len(centres) == 0:
        return np.zeros(len(positions), dtype=bool)
    distance2 = ((positions[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return distance2.min(axis=1) <= radius**2
