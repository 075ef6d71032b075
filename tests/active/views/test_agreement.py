"""Agreement: Fleiss' and Cohen's kappa on the double-read set."""

from __future__ import annotations

import numpy as np
import pytest

from active.engine.labeling import record_label
from active.views import agreement

N, C, G, INTER = "Normal", "Consolidation", "GroundGlass", "Interstitial"


def test_fleiss_kappa_textbook_example_and_unequal_raters() -> None:
    # Fleiss (1971) as in the Wikipedia article: 10 subjects, 14 raters, 5 categories, kappa 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert agreement.fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    # unequal raters (2, 3, 2): P_i = 1, 1/3, 0 so P = 4/9; p = (5/7, 2/7) so P_e = 29/49
    unequal = np.array([[2, 0], [2, 1], [1, 1], [1, 0]])  # the last subject has one rater: left out
    assert agreement.fleiss_kappa(unequal) == pytest.approx((4 / 9 - 29 / 49) / (1 - 29 / 49))
    assert np.isnan(agreement.fleiss_kappa(np.array([[2, 0], [3, 0]])))  # one category only: undefined
    assert np.isnan(agreement.fleiss_kappa(np.array([[1, 0]])))  # no subject with two raters


def test_agreement_on_the_double_read_set(proj) -> None:
    project, pool = proj
    summary = agreement.agreement_summary(project)
    assert summary["double_read_images"] == 10 and summary["readers"] == ["alice", "bob"]
    assert summary["fleiss_kappa"] == pytest.approx(0.6)
    assert summary["percent_agreement"] == pytest.approx(0.8)
    pairs = summary["pairs"]
    assert len(pairs) == 1  # carol shares no image with anyone
    pair = pairs.iloc[0]
    assert (pair["annotator_a"], pair["annotator_b"], pair["shared_images"]) == ("alice", "bob", 10)
    assert pair["kappa"] == pytest.approx(0.6) and pair["agreement"] == pytest.approx(0.8)

    adjudicate = agreement.adjudication_list(project)
    assert adjudicate["image_id"].tolist() == [pool[4], pool[9]]
    assert adjudicate["annotator_labels"].iloc[0] == f"alice={N};bob={C}"

    record_label(project, pool[10], G, "bob")  # bob now shares one image with carol
    pairs = agreement.pairwise_kappa(project).set_index(["annotator_a", "annotator_b"])
    assert pairs.loc[("bob", "carol"), "shared_images"] == 1 and pairs.loc[("bob", "carol"), "agreement"] == 1.0
    assert np.isnan(pairs.loc[("bob", "carol"), "kappa"])  # one shared image, one category: undefined

