"""Does a run's encoder read the planted regions the same way in every subject? For each
modality of RUN_DIR, with the Integrated-Gradients maps of ``regions --method ig`` (16 steps):

* the localisation ROC AUC of the group t map (patients vs controls, adjusted for age, sex and
  site; no permutations: the t map does not depend on them) of the inputs and of the ig maps;
* the median R² of each voxel's attributions regressed on its centred input value (1 when the
  gradient there is the same in every subject), inside and outside the planted regions;
* the share of planted voxels where that slope — the voxel's weight in the probe's decision —
  has the sign of the patients' difference from controls there (the inputs' t), i.e. where a
  patient's change raises the patient score: 1 for a model that reads the region, 0.5 for one
  whose weights there are as likely either way; and the same among the planted voxels whose
  difference is clear (|t| > 2).

IG with a gradient that is the same in every subject gives (x − x̄)·g, whose t at each voxel is
the inputs' t times the sign of g: the inputs' localisation exactly. Between-subject variation
of the gradient can only add noise to it (to first order), so these figures say how far a map
is from that ceiling and whether the model weighs the planted voxels coherently.

``--subjects N`` draws N labelled subjects (stratified by diagnosis, seeded) for the group test,
to compare a model trained on a larger cohort with the 200-subject setting.

    python results/cohort200s-64/coherence/gradient_coherence.py RUN_DIR OUT.json [--subjects N]
"""

import argparse
import json
import time

import numpy as np

from mmssl.evaluation.group import voxelwise_group_test
from mmssl.evaluation.saliency import localisation_auc
from mmssl.runs.brainrun import MapSettings, open_brain_run
from mmssl.runs.regions import DEFAULT_COVARIATES

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("out")
parser.add_argument("--subjects", type=int, default=None)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

brain_run = open_brain_run(args.run_dir)
truth = brain_run.truth_masks("effect")
brain = brain_run.brain
report: dict = {"run": args.run_dir, "subjects": args.subjects, "seed": args.seed}
for modality in brain_run.modalities:
    started = time.perf_counter()
    labels = brain_run.subjects("all", [modality])["label"].to_numpy()
    keep = np.flatnonzero(labels >= 0)
    if args.subjects is not None:
        rng = np.random.default_rng(args.seed)
        share = args.subjects / len(keep)
        keep = np.sort(np.concatenate([
            rng.choice(keep[labels[keep] == c], round(share * (labels[keep] == c).sum()),
                       replace=False) for c in (0, 1)]))
    design = brain_run.covariates("all", modality, DEFAULT_COVARIATES)
    adjust = None if design is None else design.iloc[keep].reset_index(drop=True)
    planted = truth[modality][brain]
    inputs = brain_run.maps(modality, "input", "all")[keep]
    ig = brain_run.maps(modality, "ig", "all", MapSettings(ig_steps=16))[keep]
    t = {name: voxelwise_group_test(maps, labels[keep], adjust, mask=brain,
                                    n_permutations=0).t_volume[brain]
         for name, maps in (("input", inputs), ("ig", ig))}
    x = inputs[:, brain] - inputs[:, brain].mean(0)
    a = ig[:, brain] - ig[:, brain].mean(0)
    slope = (x * a).sum(0) / ((x**2).sum(0) + 1e-30)
    r2 = (x * a).sum(0) ** 2 / ((x**2).sum(0) * (a**2).sum(0) + 1e-30)
    right = np.sign(slope) == np.sign(t["input"])
    clear = planted & (np.abs(t["input"]) > 2)
    entry: dict = {"subjects": int(len(keep)), "patients": int((labels[keep] == 1).sum())}
    volume = np.zeros(brain.shape, dtype=np.float64)
    entry["localisation_auc"] = {}
    for name, values in t.items():
        volume[brain] = np.abs(values)
        entry["localisation_auc"][name] = localisation_auc(volume, truth[modality], brain)
    entry["median_r2_planted"] = float(np.median(r2[planted]))
    entry["median_r2_elsewhere"] = float(np.median(r2[~planted]))
    entry["right_sign_share_planted"] = float(right[planted].mean())
    entry["right_sign_share_planted_clear"] = float(right[clear].mean())
    entry["planted_clear_voxels"] = int(clear.sum())
    entry["median_abs_t_planted"] = {k: float(np.median(np.abs(v[planted]))) for k, v in t.items()}
    entry["seconds"] = round(time.perf_counter() - started, 1)
    report[modality] = entry
    print(modality, json.dumps(entry), flush=True)
with open(args.out, "w") as handle:
    json.dump(report, handle, indent=1)
