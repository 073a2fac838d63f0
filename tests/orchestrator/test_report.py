"""Knowledge extraction: figures and the HTML page from a small campaign."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from orchestrator.optimize.base import History, Observation
from orchestrator.optimize.constraints import sample_feasible
from orchestrator.protocol import load_protocol
from orchestrator.report import (
    Importance,
    LossModel,
    ReportData,
    ReportError,
    RoundInfo,
    _default_map_pairs,
    gp_model,
    likely_to_measure,
    model_check_rows,
    on_open_edges,
    predicted_optimum,
    render_html,
    shap_importance,
    write_report,
)
from simulators.chemistry import AgNanoprism

REPO = Path(__file__).resolve().parents[2]


def small_campaign(rounds: int = 3, per_round: int = 8, replicates: int = 4) -> ReportData:
    """A campaign measured on the simulated chemistry: random conditions, the last round with recorded
    predictions (the truth, slightly off), one failed condition."""
    protocol = load_protocol(REPO / "protocols" / "ag_nanoprism.yaml")
    space, wl, loss = protocol.space(), protocol.wavelengths(), protocol.loss()
    chem = AgNanoprism()
    rng = np.random.default_rng(0)
    obs: list[Observation] = []
    infos = []
    for r in range(rounds):
        infos.append(
            RoundInfo(r, "lhs" if r == 0 else "two_step", space.bounds, {"policy": {"dnn_count": 0}})
        )
        for x in sample_feasible(space, per_round, rng):
            inputs = space.to_dicts(x)[0]
            spectra = np.array([chem.droplet(inputs, wl, rng) for _ in range(replicates)])
            losses = loss(spectra)
            prediction = chem.spectrum(inputs, wl) * 1.05 if r == rounds - 1 else None
            obs.append(
                Observation(
                    r,
                    inputs,
                    float(np.median(losses)),
                    mad=0.01,
                    spectra=spectra,
                    source="lhs" if r == 0 else "dnn",
                    prediction=prediction,
                    condition=sum(o.round_index == r for o in obs),
                )
            )
    obs[-1].failed, obs[-1].median_loss, obs[-1].spectra = True, None, None
    widened = space.with_bounds({**space.bounds, "Q_AgNO3": (4.0, 24.0)})
    infos[-1] = RoundInfo(rounds - 1, "two_step", widened.bounds, {"policy": {"dnn_count": 3}, "stop": None})
    return ReportData(
        campaign_id="c-test",
        name=protocol.name,
        status="finished",
        status_reason="max_rounds reached",
        history=History(obs, wl, loss, rounds),
        space=widened,
        rounds=infos,
        strategy="two_step",
        loss_threshold=0.15,
        optimizer_settings={"dnn": {"model": {"members": 2, "max_epochs": 300}}},
        failures={(obs[-1].round_index, obs[-1].condition): "3 of 10 droplets accepted, fewer than 5; rejected: 7 empty"},
    )


@pytest.fixture(scope="module")
def campaign() -> ReportData:
    return small_campaign()


def test_writes_figures_and_a_page_that_shows_them(campaign: ReportData, tmp_path: Path) -> None:
    result = write_report(
        campaign, tmp_path, maps=[("Q_seed", "Q_AgNO3"), ("Q_TSC", "Q_total")], shap_explain=12
    )
    expected = {
        "loss_by_round",
        "bounds_by_round",
        "model_checks",
        "loss_map_Q_seed__Q_AgNO3",
        "loss_map_Q_TSC__Q_total",
        "importance",
        "best_spectra",
    }
    assert set(result.images) == expected
    for path in result.images.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path.name
    page = result.html.read_text()
    for path in result.images.values():
        assert f'href="{path.name}"' in page  # linked to its file ...
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(expected)  # ... and embedded
    # the best conditions and the campaign's state are on the page
    best = min(campaign.measured(), key=lambda o: o.median_loss)
    assert f"{best.median_loss:.4g}" in page
    # named as `sdl status` names it, from 1
    assert f"<td>r{best.round_index + 1} c{best.condition + 1}</td>" in page and "accepted droplets" in page
    assert "finished" in page and "c-test" in page and "conditions failed" in page
    # each failed condition, and why (the reason its condition_failed event gives)
    failed = campaign.history.observations[-1]
    row = page.split("<h2>Failed conditions</h2>")[1].split("</table>")[0]
    assert f"<td>r{failed.round_index + 1} c{failed.condition + 1}</td>" in row
    assert "<td>3 of 10 droplets accepted, fewer than 5; rejected: 7 empty</td>" in row
    assert (tmp_path / "report.json").exists()


def test_report_without_enough_spectra_uses_the_gp(tmp_path: Path) -> None:
    data = small_campaign(rounds=1, per_round=6)
    result = write_report(data, tmp_path, shap_explain=6)
    assert any("spectrum network" in n for n in result.notes)
    assert "loss_map_Q_seed__Q_AgNO3" in result.images and "model_checks" in result.images


def test_refuses_an_empty_campaign_and_unknown_map_inputs(campaign: ReportData, tmp_path: Path) -> None:
    empty = ReportData(
        "c-empty",
        "x",
        "running",
        History([], campaign.history.wavelengths, campaign.history.loss),
        campaign.space,
        [],
    )
    with pytest.raises(ReportError, match="no measured condition"):
        write_report(empty, tmp_path)
    with pytest.raises(ReportError, match="no input named 'Q_gold'"):
        write_report(campaign, tmp_path, maps=[("Q_gold", "Q_AgNO3")], shap_explain=6)


def test_shap_finds_the_inputs_that_matter(campaign: ReportData) -> None:
    """On the GP of the simulated chemistry, AgNO3 (it sets the prism size) outweighs the total flow."""
    model = gp_model(campaign)
    assert model is not None
    imp = shap_importance(campaign, model, explain=10)
    assert imp.values.shape == (10, 5)
    weights = dict(zip(imp.names, imp.mean_abs, strict=True))
    assert weights["Q_AgNO3"] > weights["Q_total"]
    x_opt, f_opt = predicted_optimum(model, campaign.space, seed=0)
    assert campaign.space.feasible(x_opt[None, :]).all() and np.isfinite(f_opt)


def test_model_check_rows_follow_the_rounds(campaign: ReportData) -> None:
    rows = model_check_rows(campaign)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[2]["accuracy_cosine"] is not None and rows[2]["accuracy_cosine"] > 0.9
    assert rows[0]["accuracy_cosine"] is None
    assert rows[2]["dnn_count"] == 3


def test_the_page_lists_reagents_against_their_syringes_and_the_pumping_time(campaign: ReportData) -> None:
    data = dataclasses.replace(campaign, rig="rig-a-dry-run", pumping_s=5400.0, reagents=[
        ("AgNO3", 14_200.0, 10_000.0, 2), ("PVA", 2_400.0, 10_000.0, 1), ("water", 900.0, None, None)])
    text = re.sub(r"<[^>]+>", " ", render_html(data, {}, [], None))
    assert "rig-a-dry-run" in text and "pumps ran  1.50 h" in text
    assert "AgNO3  14.20  10  2 (refill 1x)" in text and "PVA  2.40  10  1 " in text and "water  0.90  –  –" in text
    assert "Reagents" not in re.sub(r"<[^>]+>", " ", render_html(dataclasses.replace(campaign, reagents=[]), {}, [], None))


def test_the_predicted_optimum_is_sought_where_conditions_measure() -> None:
    """A spectrum model trained on the conditions that measured says nothing of where they fail: with
    AgNO3 above 14 % failing, a model whose minimum lies at 18 % must not be quoted as the optimum."""
    data = small_campaign(rounds=2, per_round=12)
    assert likely_to_measure(data) is not None  # one failed condition already
    obs = data.history.observations
    for o in obs:
        o.failed = o.inputs["Q_AgNO3"] > 14.0
        if o.failed:
            o.median_loss, o.spectra = None, None
    assert sum(o.failed for o in obs) >= 3 and sum(not o.failed for o in obs) >= 3
    i = data.space.names.index("Q_AgNO3")
    model = LossModel("toy", lambda x: np.abs(np.atleast_2d(x)[:, i] - 18.0) / 20.0)
    free, _ = predicted_optimum(model, data.space, 1)
    assert free[i] == pytest.approx(18.0, abs=1.0)
    likely = likely_to_measure(data)
    assert likely is not None
    kept, loss = predicted_optimum(model, data.space, 1, likely=likely)
    assert kept[i] <= 15.0 and likely(kept[None, :])[0], kept
    assert loss == pytest.approx(abs(kept[i] - 18.0) / 20.0)
    data.history.observations = [dataclasses.replace(o, failed=False) for o in obs if not o.failed]
    assert likely_to_measure(data) is None  # nothing failed: nowhere to avoid


def test_the_page_says_which_bounds_widened_and_why(campaign: ReportData) -> None:
    why = {"variable": "Q_AgNO3", "edge": "high", "old": 20.0, "new": 24.0,
           "reason": "gated rule: 60% of the batch crowds it"}
    rounds = [*campaign.rounds[:-1], dataclasses.replace(campaign.rounds[-1], notes={"widening": [why]})]
    page = render_html(dataclasses.replace(campaign, rounds=rounds), {}, [], None)
    assert "<h2>Bounds widened, and edges kept</h2>" in page and "gated rule: 60% of the batch crowds it" in page
    assert "<tr><td>3</td><td>Q_AgNO3</td><td>high</td>" in page  # round index 2: the third round
    rounds_table = page.split("<h2>Rounds</h2>")[1]
    assert rounds_table.count("<tr><td>1</td>") == 1 and "<tr><td>0</td>" not in rounds_table  # from 1
    assert "Bounds widened" not in render_html(campaign, {}, [], None)
    kept = {"variable": "Q_seed", "edge": "low", "reason": "no model predicts a gain beyond it"}
    rounds = [*campaign.rounds[:-1], dataclasses.replace(campaign.rounds[-1], notes={"widening_refused": [kept]})]
    page = render_html(dataclasses.replace(campaign, rounds=rounds), {}, [], None)
    assert "<tr><td>3</td><td>Q_seed</td><td>low</td><td>kept</td>" in page and "no model predicts" in page


def test_an_optimum_on_an_edge_that_may_still_widen_is_flagged(campaign: ReportData) -> None:
    space = campaign.space  # Q_AgNO3 widened to 4-24, hard limits 0.5-80
    best = {v.name: (v.low + v.high) / 2 for v in space.variables}
    assert on_open_edges(space, best) == []
    said = on_open_edges(space, {**best, "Q_AgNO3": 24.0})
    assert said == ["on the upper bound of Q_AgNO3 (24; hard limit 80): the optimum may lie beyond it"]


def test_the_default_map_is_over_the_two_inputs_that_matter_most(campaign: ReportData) -> None:
    space = campaign.space
    assert _default_map_pairs(space) == [("Q_seed", "Q_AgNO3")]  # the paper's map, for the paper's inputs
    names = ["cd", "se", "lig", "ode", "flow"]
    renamed = SimpleNamespace(names=names)  # a chemist's own inputs (only the names are read)
    imp = Importance("toy", names, np.array([0.1, 0.05, 0.02, 0.01, 0.3]), np.zeros((1, 5)), np.zeros((1, 5)))
    assert _default_map_pairs(renamed) == [(names[0], names[1])]  # before importance is known
    assert _default_map_pairs(renamed, imp) == [("flow", "cd")]
    # the paper's inputs, on a chemistry where they matter least: its map, and the one that matters
    paper = space.names
    weights = {"Q_PVA": 0.4, "Q_total": 0.3, "Q_TSC": 0.1, "Q_AgNO3": 0.02, "Q_seed": 0.01}
    other = Importance("toy", paper, np.array([weights[n] for n in paper]), np.zeros((1, 5)), np.zeros((1, 5)))
    assert _default_map_pairs(space, other) == [("Q_seed", "Q_AgNO3"), ("Q_PVA", "Q_total")]
    same = Importance("toy", paper, np.array([{"Q_seed": 1, "Q_AgNO3": 0.9}.get(n, 0.1) for n in paper]),
                      np.zeros((1, 5)), np.zeros((1, 5)))
    assert _default_map_pairs(space, same) == [("Q_seed", "Q_AgNO3")]


def test_the_bounds_plot_says_which_strategy_each_dot_came_from(
    campaign: ReportData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its dots were coloured by strategy with no key (green and blue: which is which?)."""
    import matplotlib.pyplot as plt

    from orchestrator import report

    keys: list[list[str]] = []
    monkeypatch.setattr(report, "_save", lambda fig, path: keys.append(
        [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]) or plt.close(fig))
    report.plot_bounds_by_round(campaign, tmp_path / "b.png")
    sources = {"network" if o.source == "dnn" else o.source for o in campaign.history.observations}
    assert {"search bounds", "hard limits"} <= set(keys[0]) and sources <= set(keys[0]), (keys, sources)


def test_a_model_stop_rule_not_met_says_what_held_it(campaign: ReportData) -> None:
    """The State table read "model stop rule | not met" beside an accurate, stable network."""
    from dataclasses import replace

    from orchestrator.report import _stop_held

    assert _stop_held(campaign) == "not met"
    last = campaign.rounds[-1]
    held = {**last.notes, "policy": {**last.notes["policy"], "stop_held": "the predicted optimum sits on an edge"}}
    rounds = [*campaign.rounds[:-1], replace(last, notes=held)]
    assert _stop_held(replace(campaign, rounds=rounds)) == (
        f"not met when round {last.index + 1} was planned: the predicted optimum sits on an edge")


def test_a_near_perfect_loss_does_not_read_as_zero() -> None:
    """The state table said "best median loss 0.0000" beside a best-conditions table with 4.876e-05."""
    from orchestrator.report import _loss_text

    assert [_loss_text(v) for v in (0.1234, 0.01, 0.0049, 4.876e-05, 0.0)] == ["0.123", "0.010", "0.0049", "4.9e-05", "0.000"]
    assert _loss_text(4.876e-05, 4) == "4.9e-05" and _loss_text(0.0049, 4) == "0.0049"
