import numpy as np
import pytest

from skinlesion.referral import (concern, concerning, describe_referral, describe_scores, fit_referral, referral_scores,
                                 refers)

CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]


def probabilities_for(labels, rng):
    """Noisy probabilities that lean toward each photo's own class."""
    logits = rng.normal(size=(len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), [CLASSES.index(label) for label in labels]] += 1.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_the_non_benign_classes_are_the_cancers_and_pre_cancers():
    assert concerning(CLASSES) == ["MEL", "BCC", "AK", "SCC"]
    probs = np.array([[0.1, 0.4, 0.2, 0.05, 0.1, 0.05, 0.05, 0.05]])
    assert concern(probs, CLASSES) == pytest.approx([0.4])


def test_the_threshold_is_the_highest_that_refers_the_asked_share_of_cancers_and_pre_cancers():
    rng = np.random.default_rng(0)
    labels = rng.choice(CLASSES, size=800)
    probs = probabilities_for(labels, rng)
    rule = fit_referral(probs, labels, CLASSES, sensitivity=0.9)
    assert rule["classes"] == ["MEL", "BCC", "AK", "SCC"] and rule["target_sensitivity"] == 0.9
    assert rule["val"]["sensitivity"] >= 0.9
    # Any higher threshold refers fewer than 90% of them.
    above = referral_scores(probs, labels, CLASSES, np.nextafter(rule["threshold"], 1))
    assert above["sensitivity"] < 0.9
    # Specificity is the benign photos left unreferred, and per class shares add up to the whole.
    scores = rule["val"]
    referred = refers(probs, CLASSES, rule["threshold"])
    assert scores["specificity"] == pytest.approx(1 - referred[np.isin(labels, ["NV", "BKL", "DF", "VASC"])].mean())
    counts = {code: (labels == code).sum() for code in CLASSES}
    assert sum(scores["referred_per_class"][c] * counts[c] for c in CLASSES) == pytest.approx(referred.sum())
    assert "sensitivity" in describe_referral(rule["threshold"], scores, CLASSES)
    # A target that is not a share of photos is refused, naming it.
    for target in (0.0, 1.5, 95.0):
        with pytest.raises(ValueError, match=f"referral sensitivity {target}: give the share"):
            fit_referral(probs, labels, CLASSES, sensitivity=target)


def test_a_cancer_or_pre_cancer_as_the_top_class_is_referred_at_any_threshold():
    probs = np.array([[0.30, 0.25, 0.0, 0.0, 0.25, 0.2, 0.0, 0.0],   # MEL on top, non-benign sum 0.30
                      [0.20, 0.50, 0.05, 0.0, 0.25, 0.0, 0.0, 0.0],  # NV on top, non-benign sum 0.25
                      [0.0, 0.90, 0.0, 0.0, 0.10, 0.0, 0.0, 0.0]])   # NV on top, nothing else
    assert refers(probs, CLASSES, 0.5).tolist() == [True, False, False]
    assert refers(probs, CLASSES, 0.25).tolist() == [True, True, False]
    # Where the top class alone refers the asked share, the threshold rises to 1 (it then refers nothing more).
    labels = ["MEL", "NV", "NV"]
    assert fit_referral(probs, labels, CLASSES)["threshold"] == 1.0


def test_no_rule_without_photos_of_both_groups():
    rng = np.random.default_rng(1)
    labels = np.array(["NV", "BKL"] * 20)
    assert fit_referral(probabilities_for(labels, rng), labels, CLASSES) is None
    labels = np.array(["MEL", "SCC"] * 20)
    assert fit_referral(probabilities_for(labels, rng), labels, CLASSES) is None


def test_a_split_without_one_group_is_scored_and_described_without_failing():
    rng = np.random.default_rng(2)
    labels = np.array(["NV", "DF"] * 10)
    scores = referral_scores(probabilities_for(labels, rng), labels, CLASSES, 0.3)
    assert scores["sensitivity"] is None and 0 <= scores["specificity"] <= 1
    assert describe_scores(scores).startswith("sensitivity -, specificity ")
