"""Integrated Gradients against expected gradients on one run (BRAIN.md, "Two more routes to the
fALFF map"): for each modality, the localisation ROC AUC of the group t map (patients vs
controls, adjusted for age, sex and site; no permutations: the t map does not depend on them)
of the input, ig (16 steps) and eg (32 draws) maps of all subjects, and the median share of
the attributions' variance across subjects that a constant gradient explains at a voxel (the
R² of each voxel's attributions regressed on its centred input value), inside and outside the
planted regions.

    python results/cohort200s-64/eg/compare_maps.py RUN_DIR OUT.json
"""

import json
import sys
import time

import numpy as np

from mmssl.evaluation.group import voxelwise_group_test
from mmssl.evaluation.saliency import localisation_auc
from mmssl.runs.brainrun import MapSettings, open_brain_run
from mmssl.runs.regions import DEFAULT_COVARIATES

run_dir, out_path = sys.argv[1], sys.argv[2]
brain_run = open_brain_run(run_dir)
truth = brain_run.truth_masks("effect")
brain = brain_run.brain
settings = {"ig": MapSettings(ig_steps=16), "eg": MapSettings(eg_samples=32, batch_size=2)}
report: dict = {}
for modality in brain_run.modalities:
    labels = brain_run.subjects("all", [modality])["label"].to_numpy()
    keep = labels >= 0
    design = brain_run.covariates("all", modality, DEFAULT_COVARIATES)
    adjust = design.loc[keep].reset_index(drop=True)
    inputs = brain_run.maps(modality, "input", "all")[:, brain]
    centred = inputs - inputs.mean(0)
    planted = truth[modality][brain]
    entry: dict = {}
    for method in ("input", "ig", "eg"):
        started = time.perf_counter()
        maps = brain_run.maps(modality, method, "all", settings.get(method))
        t = voxelwise_group_test(maps[keep], labels[keep], adjust, mask=brain,
                                 n_permutations=0).t_volume
        result = {"localisation_auc": localisation_auc(np.abs(t), truth[modality], brain),
                  "seconds": round(time.perf_counter() - started, 1)}
        if method != "input":
            a = maps[:, brain] - maps[:, brain].mean(0)
            r2 = (centred * a).sum(0) ** 2 / ((centred**2).sum(0) * (a**2).sum(0) + 1e-30)
            result["median_r2_planted"] = float(np.median(r2[planted]))
            result["median_r2_elsewhere"] = float(np.median(r2[~planted]))
        entry[method] = result
    report[modality] = entry
    print(modality, json.dumps(entry), flush=True)
with open(out_path, "w") as handle:
    json.dump(report, handle, indent=1)
