"""Detect a backdoor in a trained run: STRIP at inference (Gao et al. 2019) by default.

    python scripts/detect.py --config configs/detect.py --config.source=runs/full \
        --config.detector.name=strip

`source` is a finished `scripts/train.py` run directory (its final dense model, or with
`--config.source_arm=pruned` its pruned one) or a finished `scripts/defend.py` directory
(the model the defense returned). Its configuration rebuilds the same test set and
triggered test set; the defender's clean images (r = `--config.defender.fraction` of the
training set, default 1%) supply STRIP's overlays (tuning part, N =
`--config.detector.strip.overlays`, default 100) and its threshold (held-out part, at FRR
`--config.detector.strip.frr`, default 1%). The source is only read; `config.json`,
`summary.json` (FRR on the clean test set, FAR on triggered non-target test images, ROC
AUC, the threshold), `scores.npz` and `entropy.png` go to `<source>/detections/<detector>`
unless `--workdir` says otherwise. A smoke-scale model is examined in seconds:

    python scripts/train.py --config configs/smoke.py --workdir runs/smoke
    python scripts/detect.py --config configs/detect.py --config.source=runs/smoke \
        --config.detector.strip.overlays=20
"""

from jaxbd.configs import detect_config


def get_config():
    return detect_config()
