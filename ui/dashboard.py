"""Progress dashboard (leads and admins): label efficiency, labels per class and annotator, agreement,
the adjudication list and the round history; leads can start a training round and watch it run."""

from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from active.engine import policy
from active.engine.jobs import TRAIN_MODES
from active.views import agreement, dashboard, efficiency, status
from active.views.accounts import can
from store.errors import CxrAlError
from store.project import Project
from ui import session

POLL_S = 3.0  # how often the round status refreshes while a round runs or was just requested
REQUEST_WATCH_S = 120.0  # keep polling this long after "Train now" for the round to appear
MESSAGE_KEY = "dash_message"
REQUESTED_KEY = "dash_train_requested_at"
ROUNDS_SEEN_KEY = "dash_rounds_seen"
PROJECT_SERIES = "this project (rounds)"
# the project in red, random (the baseline) in grey, the other strategies in Tableau colours
PROJECT_COLOR, RANDOM_COLOR = "#d62728", "#7f7f7f"
STRATEGY_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def efficiency_chart(curve: pd.DataFrame, simulation: pd.DataFrame, metric: str) -> alt.LayerChart:
    """The project's rounds (points, line, CI error bars) over the simulated strategies (mean line, min-max band)."""
    title = f"test {dashboard.METRIC_LABELS[metric]}"
    x = alt.X("labels:Q", title="labels used")
    strategies = sorted(simulation["strategy"].unique(), key=lambda s: (s != "random", s)) if len(simulation) else []
    domain = [PROJECT_SERIES, *strategies]
    others = [s for s in strategies if s != "random"]
    cycle = STRATEGY_COLORS * (len(others) // len(STRATEGY_COLORS) + 1)
    palette = [PROJECT_COLOR, *([RANDOM_COLOR] if "random" in strategies else []), *cycle[:len(others)]]
    color = alt.Color("strategy:N", title="", scale=alt.Scale(domain=domain, range=palette))
    layers = []
    if not simulation.empty:
        sim = alt.Chart(simulation)
        layers.append(sim.mark_area(opacity=0.12).encode(x=x, y=alt.Y("low:Q", title=title), y2="high:Q", color=color))
        layers.append(sim.mark_line(strokeDash=[5, 3], strokeWidth=1.5).encode(
            x=x, y=alt.Y("mean:Q", title=title), color=color,
            tooltip=["strategy", "labels", alt.Tooltip("mean:Q", format=".3f"), "seeds"]))
    if not curve.empty:
        points = alt.Chart(curve.assign(strategy=PROJECT_SERIES))
        with_ci = curve.dropna(subset=["ci_low", "ci_high"]).assign(strategy=PROJECT_SERIES)
        if not with_ci.empty:
            layers.append(alt.Chart(with_ci).mark_errorbar(ticks=True).encode(
                x=x, y=alt.Y("ci_low:Q", title=title), y2="ci_high:Q", color=color))
        layers.append(points.mark_line(point=True, strokeWidth=2.5).encode(
            x=x, y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)), color=color,
            tooltip=["round_id", "labels", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
                     alt.Tooltip("ci_high:Q", format=".3f"), "mode"]))
    return alt.layer(*layers).properties(height=360)


def _on_train(project: Project, actor: str) -> None:
    if not session.allowed("train"):
        return  # the page run that follows shows why
    try:
        pid = policy.start_training_now(project, actor)
    except CxrAlError as exc:
        st.session_state[MESSAGE_KEY] = f":orange[{exc}]"
        return
    st.session_state[REQUESTED_KEY] = time.monotonic()
    st.session_state[MESSAGE_KEY] = f"Training round requested (process {pid}); it appears below once it opens."


def _rounds_seen(history: pd.DataFrame) -> tuple:
    return tuple(zip(history["round_id"], history["status"], strict=True))


def _round_status(project: Project) -> None:
    """Running rounds with their time so far and the last lines of the background log; when a round
    opens or ends, the whole page redraws so the curve and the history show it."""
    history = status.round_history(project)
    seen = st.session_state.get(ROUNDS_SEEN_KEY) or ()
    if _rounds_seen(history) != seen:
        newest_seen = max((int(r) for r, _ in seen), default=0)
        if ((history["kind"] == "train") & (history["round_id"] > newest_seen)).any():
            st.session_state[REQUESTED_KEY] = None  # the requested round has opened
        st.rerun(scope="app")
    running = history[history["status"] == "running"]
    if running.empty:
        requested = st.session_state.get(REQUESTED_KEY)
        if requested is not None and time.monotonic() - requested < REQUEST_WATCH_S:
            st.info("A training round is starting ...", icon=":material/hourglass_top:")
        else:
            st.caption("No round is running.")
        return
    for row in running.itertuples(index=False):
        minutes, seconds = divmod(int(row.duration_s), 60)
        st.info(f"Round {row.round_id} ({row.kind}) running for {minutes}:{seconds:02d}, "
                f"on {row.labels} labels", icon=":material/model_training:")
    tail = status.background_log_tail(project)
    if tail:
        st.code(tail, language=None)


def _policy_form(project: Project, user: dict[str, str]) -> None:
    """The round policy and double-read fraction, editable by leads and admins (written to project.yaml)."""
    from active.strategies import STRATEGIES

    current = project.round_policy
    with st.expander("Round policy"), st.form("dash_policy"):
        c1, c2, c3 = st.columns(3)
        train_every = c1.number_input("Train after this many new labels (0: on demand only)", 0, 100_000,
                                      int(current.get("train_every") or 0), step=5, key="dash_policy_train_every")
        modes = list(TRAIN_MODES)
        mode = c2.selectbox("Mode", modes, index=modes.index(current["mode"]) if current["mode"] in modes else 0, key="dash_policy_mode",
                            help="probe: logistic regression on the SSL embeddings (seconds on a CPU); "
                                 "finetune: the backbone end to end (minutes; a GPU helps)")
        epochs = c3.number_input("Fine-tuning epochs", 1, 1_000, int(current.get("epochs") or 10), key="dash_policy_epochs")
        names = list(STRATEGIES)
        strategy = c1.selectbox("Query strategy", names,
                                index=names.index(current["strategy"]) if current["strategy"] in names else 0,
                                key="dash_policy_strategy")
        batch_size = c2.number_input("Suggestions per batch", 1, 1_000, int(current.get("batch_size") or 16), key="dash_policy_batch")
        double_read = c3.slider("Double-read fraction", 0.0, 1.0,
                                float(project.config.get("double_read_fraction", 0.0)), step=0.05, key="dash_policy_double",
                                help="Share of each batch also sent to a second reader, to measure agreement")
        random_share = c1.slider("Random share of auto batches", 0.0, 1.0, float(current.get("random_share", 0.2)),
                                 step=0.05, key="dash_policy_random_share",
                                 help="Drawn uniformly from the pool: it measures whether active picks pay off "
                                      "(below) and keeps auto from straying far from random sampling")
        if st.form_submit_button("Save policy", key="dash_policy_save"):
            try:
                policy.update_round_policy(project, user["name"], train_every=int(train_every), mode=mode,
                                            strategy=strategy, batch_size=int(batch_size), epochs=int(epochs),
                                            random_share=float(random_share), double_read_fraction=float(double_read))
            except CxrAlError as exc:
                st.session_state[MESSAGE_KEY] = f":orange[Not saved: {exc}]"
            else:
                st.session_state[MESSAGE_KEY] = "Round policy saved."
            st.rerun()


def _training_panel(project: Project, user: dict[str, str], history: pd.DataFrame) -> None:
    """'Train now' for those who may train, and a status panel that polls while something runs."""
    st.session_state[ROUNDS_SEEN_KEY] = _rounds_seen(history)
    with st.container(horizontal=True, key="dash-train"):
        if can(user["role"], "train"):
            st.button("Train now", key="dash_train_now", type="primary", icon=":material/model_training:",
                      on_click=_on_train, args=(project, user["name"]),
                      help="Start a training round on the current labels now, whatever the round policy")
        current = project.round_policy
        every = int(current.get("train_every") or 0)
        st.caption(f"Round policy: {current['mode']}, " +
                   (f"a round every {every} new labels" if every > 0 else "rounds on demand only"))
    if can(user["role"], "configure_rounds"):
        _policy_form(project, user)
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        st.markdown(message)
    requested = st.session_state.get(REQUESTED_KEY)
    watching = (history["status"] == "running").any() or (
        requested is not None and time.monotonic() - requested < REQUEST_WATCH_S)
    session.fragment("dashboard", run_every=POLL_S if watching else None)(_round_status)(project)


def _efficiency(project: Project) -> None:
    st.subheader("Label efficiency")
    metric = st.selectbox("Test metric", dashboard.CURVE_METRICS, format_func=dashboard.METRIC_LABELS.get,
                          key="dash_metric")
    curve = dashboard.efficiency_curve(project, metric)
    simulation = dashboard.simulation_curves(project, metric)
    if curve.empty and simulation.empty:
        st.info("No scored training round yet: the curve gets a point after each training round "
                "(it needs a test split with ground truth).")
        return
    if not curve.empty:
        last = curve.iloc[-1]
        ci = "" if pd.isna(last["ci_low"]) else f" (95% CI {last['ci_low']:.3f} to {last['ci_high']:.3f})"
        with st.container(key="dash-latest-point"):
            st.markdown(f"Round {int(last['round_id'])}: test {dashboard.METRIC_LABELS[metric]} "
                        f"**{last['value']:.3f}**{ci} on {int(last['labels'])} labels "
                        f"({len(curve)} round{'s' if len(curve) != 1 else ''} on the curve)")
    st.altair_chart(efficiency_chart(curve, simulation, metric), width="stretch")
    st.caption("Points: this project's training rounds with 95% bootstrap CIs. Dashed: oracle simulation "
               "strategies (mean over seeds, band min to max), random included for comparison.")
    with st.expander("Curve data"):
        with st.container(key="dash-curve-table"):
            st.dataframe(curve, hide_index=True)
        if not simulation.empty:
            with st.container(key="dash-simulation-table"):
                st.dataframe(simulation, hide_index=True)


def _paying_off(project: Project) -> None:
    st.subheader("Is active learning paying off?")
    report = efficiency.efficiency(project)
    overall = report["overall"]
    with st.container(key="dash-paying-off"):
        st.markdown(f"**{overall['sentence'].capitalize()}.**")
        if report["rounds"]:
            st.dataframe(efficiency.efficiency_table(report), hide_index=True)
    st.caption("Each round's model scored on the labels that arrived after it: the random share of auto's batches "
               "(an unbiased sample of the pool, so no test split is needed) against the actively chosen picks, "
               "with 95% bootstrap CIs. Lower accuracy on active picks means they are the images the model gets "
               "wrong.")


def _labels(project: Project) -> None:
    st.subheader("Labels")
    over_time = dashboard.labels_per_class_over_time(project)
    if over_time.empty:
        st.info("No labels yet.")
    else:
        st.altair_chart(alt.Chart(over_time).mark_line(point=True).encode(
            x=alt.X("time:T", title=""), y=alt.Y("labels:Q", title="labeled images (cumulative)"),
            color=alt.Color("label:N", title="class", sort=project.classes),
            tooltip=["time:T", "label", "labels"]).properties(height=260), width="stretch")
    stats = dashboard.annotator_stats(project)
    st.markdown("**Annotators**")
    if stats.empty:
        st.caption("No annotator has labeled yet.")
        return
    with st.container(key="dash-annotators"):
        st.dataframe(stats, hide_index=True, column_config={
            "labels": st.column_config.NumberColumn("current labels"),
            "median_seconds": st.column_config.NumberColumn("median s / image", format="%.1f"),
            "labeling_hours": st.column_config.NumberColumn("hours on images", format="%.2f"),
            "labels_per_hour": st.column_config.NumberColumn("labels / hour on images", format="%.0f"),
            "session_hours": st.column_config.NumberColumn("session hours", format="%.2f"),
            "labels_per_session_hour": st.column_config.NumberColumn("labels / session hour", format="%.0f"),
        })


def _agreement(project: Project) -> None:
    st.subheader("Agreement")
    summary = agreement.agreement_summary(project)
    if summary["double_read_images"] == 0:
        st.info("No double-read images yet (set double_read_fraction in project.yaml to send some labeled "
                "images to a second reader).")
    else:
        c1, c2, c3 = st.columns(3)
        fleiss = summary["fleiss_kappa"]
        c1.metric("Fleiss' kappa", "n/a" if pd.isna(fleiss) else f"{fleiss:.3f}")
        c2.metric("Double-read images", summary["double_read_images"])
        c3.metric("All readers agree", f"{summary['percent_agreement']:.0%}")
        st.markdown("**Cohen's kappa per pair**")
        with st.container(key="dash-kappa-pairs"):
            st.dataframe(summary["pairs"], hide_index=True, column_config={
                "agreement": st.column_config.NumberColumn(format="percent"),
                "kappa": st.column_config.NumberColumn(format="%.3f")})
    adjudication = agreement.adjudication_list(project)
    st.markdown(f"**Adjudication list** ({len(adjudication)} images whose labels disagree)")
    if adjudication.empty:
        st.caption("Nothing to adjudicate.")
    else:
        with st.container(key="dash-adjudication"):
            st.dataframe(adjudication, hide_index=True)
        st.caption("Settle them on the Review page (Image history): a lead's relabel is recorded with who and when.")


def _rounds(history: pd.DataFrame) -> None:
    st.subheader("Rounds")
    if history.empty:
        st.info("No rounds yet.")
        return
    for row in history[history["status"] == "failed"].head(5).itertuples(index=False):
        when = f" at {row.finished_at:%Y-%m-%d %H:%M} UTC" if pd.notna(row.finished_at) else ""
        st.error(f"Round {row.round_id} ({row.kind}) failed{when}: {row.error}", icon=":material/error:")
    with st.container(key="dash-rounds"):
        st.dataframe(history, hide_index=True, column_config={
            "duration_s": st.column_config.NumberColumn("seconds", format="%.0f"),
            **{m: st.column_config.NumberColumn(dashboard.METRIC_LABELS[m], format="%.3f") for m in dashboard.CURVE_METRICS},
        })


def render() -> None:
    """The dashboard for leads and admins."""
    user = session.require("dashboard")
    project = session.project()
    st.title("Progress")
    history = status.round_history(project)
    _training_panel(project, user, history)
    _efficiency(project)
    _paying_off(project)
    _labels(project)
    _agreement(project)
    _rounds(history)


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.dashboard import render as _render

    _render()
