"""The dashboard's numbers: efficiency points, simulation curves, labels per class, throughput."""

from __future__ import annotations

import pytest

from active.engine.labeling import record_label, undo_label
from active.views import dashboard
from store.errors import CxrAlError
from store.export import labeled_set

N, C, G, INTER = "Normal", "Consolidation", "GroundGlass", "Interstitial"


def test_efficiency_curve_one_point_per_scored_round_with_ci(proj) -> None:
    project, _ = proj
    curve = dashboard.efficiency_curve(project)
    assert curve["round_id"].tolist() == [2, 5]  # failed and unscored rounds give no point
    assert curve["labels"].tolist() == [10, 16]
    assert curve["value"].tolist() == pytest.approx([0.70, 0.80])
    assert curve[["ci_low", "ci_high"]].to_numpy().ravel().tolist() == pytest.approx([0.60, 0.80, 0.72, 0.88])
    balanced = dashboard.efficiency_curve(project, "balanced_accuracy")
    assert balanced["value"].tolist() == pytest.approx([0.50, 0.75])
    assert dashboard.efficiency_curve(project, "hm").empty  # recorded by no round
    with pytest.raises(CxrAlError, match="unknown metric"):
        dashboard.efficiency_curve(project, "auc")


def test_simulation_curves_mean_and_band_per_strategy(proj) -> None:
    project, _ = proj
    sim = dashboard.simulation_curves(project).set_index(["strategy", "labels"])
    assert set(sim.index.get_level_values(0)) == {"random", "entropy"}
    assert sim.loc[("random", 10), ["mean", "low", "high"]].tolist() == pytest.approx([0.61, 0.60, 0.62])
    assert sim.loc[("entropy", 20), "mean"] == pytest.approx(0.76)
    assert (sim["seeds"] == 2).all() and (sim["full_label"] == 0.9).all()
    assert dashboard.simulation_curves(project, "hm").empty  # not in curves.csv


def test_labels_per_class_and_annotator_throughput(proj) -> None:
    project, pool = proj
    over_time = dashboard.labels_per_class_over_time(project)
    last = over_time[over_time["time"] == over_time["time"].max()].set_index("label")["labels"]
    expected = labeled_set(project.db)["label"].value_counts()
    assert last.to_dict() == {c: int(expected.get(c, 0)) for c in project.classes}
    assert over_time.groupby("label")["labels"].apply(lambda s: s.is_monotonic_increasing).all()

    stats = dashboard.annotator_stats(project).set_index("annotator")
    assert stats.loc["alice", "labels"] == 10 and stats.loc["carol", "labels"] == 6
    assert stats.loc["bob", "median_seconds"] == 9.0
    assert stats.loc["alice", "labels_per_hour"] == pytest.approx(3600 / 6)  # ten labels of 6 s each
    assert stats.loc["carol", "labels_per_hour"] == pytest.approx(3600 / 12)
    # one session each (seconds apart): its first image's time plus the gaps between labels
    assert 12 / 3600 <= stats.loc["carol", "session_hours"] < 60 / 3600
    record_label(project, pool[20], N, "alice", seconds_spent=3.0)
    undo_label(project, "alice")  # a withdrawn label is not work done
    assert dashboard.annotator_stats(project).set_index("annotator").loc["alice", "labels_given"] == 10

