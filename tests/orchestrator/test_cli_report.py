"""``sdl report``: a campaign read from the store (its rows as the store API returns them) to the page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_report import REPO, small_campaign

from orchestrator.campaign import start_campaign
from orchestrator.cli.main import main
from orchestrator.report import ReportData, load_report_data
from orchestrator.store import PlannedCondition, open_store

PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
RIG = REPO / "deploy" / "rigs" / "simulated.yaml"


def fill_store(url: str, data: ReportData, *, target: Path | None = None) -> str:
    """A campaign in a real store holding ``data``: rounds, conditions, accepted and rejected
    replicates, one failed condition, and a planned round not measured yet."""
    store = open_store(url)
    options = {"target": str(target)} if target is not None else {}
    cid = start_campaign(store, PROTOCOL, RIG, seed=data.seed, options=options)
    store.set_status(cid, "running")
    rounds: dict[int, list] = {}
    for o in data.history.observations:
        rounds.setdefault(o.round_index, []).append(o)
    n_wl = len(data.history.wavelengths)
    for info in data.rounds:
        obs = rounds[info.index]
        planned = [PlannedCondition(o.inputs, o.source, o.prediction) for o in obs]
        store.add_round(
            cid, info.index, strategy=info.strategy, bounds=info.bounds, conditions=planned, notes=info.notes
        )
        for i, o in enumerate(obs):
            store.start_condition(cid, info.index, i, 0)
            spectra = [] if o.spectra is None else list(o.spectra)
            for j, s in enumerate(spectra):
                store.add_replicate(
                    cid,
                    info.index,
                    i,
                    0,
                    j,
                    absorbance=s,
                    raw={},
                    loss=None,
                    accepted=True,
                    reject_reason=None,
                    clock_s=float(j),
                )
            # a rejected droplet must not reach the models
            store.add_replicate(
                cid,
                info.index,
                i,
                0,
                len(spectra),
                absorbance=np.full(n_wl, 9.0),
                raw={},
                loss=None,
                accepted=False,
                reject_reason="bubble",
                clock_s=99.0,
            )
            store.finish_condition(
                cid,
                info.index,
                i,
                median_loss=o.median_loss,
                mad=o.mad,
                accepted=len(spectra),
                failed=o.failed,
            )
        store.finish_round(cid, info.index)
    last = data.rounds[-1]
    store.add_round(
        cid,
        last.index + 1,
        strategy="two_step",
        bounds=last.bounds,
        conditions=[PlannedCondition(data.history.observations[0].inputs, "dnn")],
        notes={},
    )
    store.set_status(cid, "finished", reason="max_rounds reached")
    store.close()
    return cid


@pytest.fixture(scope="module")
def campaign() -> ReportData:
    return small_campaign()


@pytest.fixture(scope="module")
def stored(campaign: ReportData, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'sdl.db'}"
    return url, fill_store(url, campaign)


def test_store_rows_become_the_report_data(campaign: ReportData, stored: tuple[str, str]) -> None:
    url, cid = stored
    data = load_report_data(open_store(url), cid)
    assert data.status == "finished" and data.status_reason == "max_rounds reached"
    assert len(data.history.observations) == len(campaign.history.observations)  # the planned one left out
    assert len(data.history.failed()) == 1
    for got, want in zip(data.history.observations, campaign.history.observations, strict=True):
        assert got.inputs == pytest.approx(want.inputs) and got.median_loss == pytest.approx(want.median_loss)
        assert got.source == want.source
        if want.spectra is None:
            assert got.spectra is None
        else:
            np.testing.assert_array_equal(got.spectra, want.spectra)  # rejected droplets dropped
        assert (got.prediction is None) == (want.prediction is None)
    assert data.space.bounds["Q_AgNO3"] == (4.0, 24.0)  # the latest round's bounds
    assert [r.index for r in data.rounds] == [0, 1, 2, 3]
    assert data.loss_threshold == 0.15 and data.strategy == "default"
    np.testing.assert_allclose(data.history.loss.target, campaign.history.loss.target)


def test_the_campaigns_own_target_is_used(campaign: ReportData, tmp_path: Path) -> None:
    target = tmp_path / "peak600.csv"
    target.write_text("wavelength_nm,absorbance\n370,0.1\n600,1.0\n810,0.1\n")
    url = f"sqlite:///{tmp_path / 'sdl.db'}"
    cid = fill_store(url, campaign, target=target)
    target.unlink()  # the store keeps its text: the file may move after the run
    data = load_report_data(open_store(url), cid)
    assert int(data.history.loss.target.argmax()) == 220  # 600 nm on the 380-800 nm grid


def test_sdl_report_writes_the_page(
    stored: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, cid = stored
    out = tmp_path / "rep"
    code = main(["report", cid, "--db", url, "--out", str(out), "--map", "Q_TSC,Q_total", "--shap", "6"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    report = json.loads((out / "report.json").read_text())
    assert report["campaign_id"] == cid
    assert "loss_map_Q_TSC__Q_total" in report["images"] and "importance" in report["images"]
    for name in report["images"].values():
        assert (out / name).stat().st_size > 10_000
    assert 0.0 <= report["predicted_optimum"]["loss"] < 1.0
    assert cid in (out / "index.html").read_text()


def test_sdl_report_refuses_what_it_cannot_do(
    stored: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, cid = stored
    out = tmp_path / "rep"
    assert main(["report", "c-nope", "--db", url, "--out", str(out)]) == 1
    assert "sdl status" in capsys.readouterr().err
    assert main(["report", cid, "--db", url, "--map", "Q_seed", "--out", str(out)]) == 2
    assert "two input names" in capsys.readouterr().err
    assert main(["report", cid, "--db", url, "--map", "Q_seed,Q_gold", "--out", str(out)]) == 1
    assert "no input named 'Q_gold'" in capsys.readouterr().err
    assert not out.exists()  # nothing written for a refused report
