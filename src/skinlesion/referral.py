"""The referral rule: when an answer should send the person to a dermatologist, whatever its top class. No torch.

The top class alone lets too many cancers through: with the bundled model 57 of the test split's 250 melanomas
had a benign top class (2026-12-02). So a photo is referred when its top class is not benign or
when the probabilities of every class that is not benign (skin cancers and pre-cancers: MEL, BCC, SCC, AK) add up
to a threshold, fitted on the validation split so that REFERRAL_SENSITIVITY of its non-benign photos are referred;
the exported model carries it.
"""

import math

import numpy as np

from skinlesion.classes import BY_CODE

REFERRAL_SENSITIVITY = 0.95  # a missed skin cancer costs far more than a needless visit to a dermatologist


def concerning(classes) -> list[str]:
    """Return the classes that are not benign: the ones a dermatologist should see."""
    return [code for code in classes if BY_CODE[code].risk != "benign"]


def concern(probabilities: np.ndarray, classes) -> np.ndarray:
    """Return the summed probability of the non-benign classes for each row of (N, K) probabilities: (N,)."""
    wanted = set(concerning(classes))
    return np.asarray(probabilities)[:, [i for i, code in enumerate(classes) if code in wanted]].sum(axis=1)


def refers(probabilities: np.ndarray, classes, threshold: float) -> np.ndarray:
    """Return which rows of (N, K) probabilities the rule refers: a non-benign top class, or the non-benign classes'
    summed probability at the threshold or above: (N,) bools."""
    top_concerns = np.isin(np.asarray(classes)[np.asarray(probabilities).argmax(axis=1)], concerning(classes))
    return top_concerns | (concern(probabilities, classes) >= threshold)


def referral_score(probabilities: np.ndarray, classes) -> np.ndarray:
    """Return each row's score under the rule: infinite where the top class is a cancer or pre-cancer (referred at any
    threshold), else the non-benign classes' summed probability; `refers` is this score at the threshold or above."""
    return np.where(refers(probabilities, classes, np.inf), np.inf, concern(probabilities, classes))


def check_sensitivity(sensitivity: float) -> None:
    """Refuse a referral target that is not a share of photos (above 0, at most 1)."""
    if not 0 < sensitivity <= 1:
        raise ValueError(f"referral sensitivity {sensitivity}: give the share of the cancers and pre-cancers to "
                         f"refer, above 0 and at most 1 (e.g. 0.95)")


def fit_referral(probabilities: np.ndarray, labels, classes,
                 sensitivity: float = REFERRAL_SENSITIVITY) -> dict | None:
    """Return the referral rule fitted on validation: the highest threshold at which `refers` sends on at least
    `sensitivity` of the non-benign photos (labels: class codes), with its scores there; None where validation
    lacks benign or non-benign photos (a model over one group has nothing to weigh)."""
    check_sensitivity(sensitivity)
    labels = np.asarray(labels)
    positive = np.isin(labels, concerning(classes))
    if positive.all() or not positive.any():
        return None
    scores = referral_score(probabilities, classes)[positive]
    threshold = min(1.0, float(np.sort(scores)[::-1][math.ceil(sensitivity * len(scores)) - 1]))
    return {"threshold": threshold, "target_sensitivity": sensitivity, "classes": concerning(classes),
            "val": referral_scores(probabilities, labels, classes, threshold)}


def referral_scores(probabilities: np.ndarray, labels, classes, threshold: float) -> dict:
    """Score the rule at a threshold: share of non-benign photos referred (sensitivity), of benign photos not
    referred (specificity), and of each class's photos referred."""
    labels = np.asarray(labels)
    referred = refers(probabilities, classes, threshold)
    positive = np.isin(labels, concerning(classes))
    return {"images": int(len(labels)),
            "sensitivity": float(referred[positive].mean()) if positive.any() else None,
            "specificity": float(1 - referred[~positive].mean()) if (~positive).any() else None,
            "referred": float(referred.mean()) if len(labels) else 0.0,
            "referred_per_class": {code: float(referred[labels == code].mean()) for code in classes
                                   if (labels == code).any()}}


def describe_referral(threshold: float, scores: dict, classes) -> str:
    """Say in one line how a referral threshold did on one split."""
    return f"referral ({'+'.join(concerning(classes))} >= {threshold:.3f}): {describe_scores(scores)}"


def describe_scores(scores: dict) -> str:
    """Say how many photos a referral threshold sent on (referral_scores); '-' where a split lacks a group."""
    sensitivity, specificity = ("-" if scores[k] is None else f"{scores[k]:.3f}"
                                for k in ("sensitivity", "specificity"))
    return (f"sensitivity {sensitivity}, specificity {specificity}, {scores['referred']:.1%} of {scores['images']} "
            f"photos referred")
