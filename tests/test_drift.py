"""Embedding baselines: the statistics (pure), their place in the store (WAL, checkpoints), and drift
flagged by real ingest runs of the packaged model over corpora of the same and of another kind."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vectormill.embedding.drift import DriftProfile, compare, pairwise_similarities, sampling_key, token_summary
from vectormill.embedding.settings import DriftSettings
from vectormill.flows.config import load_config
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import BaselineRecord
from vectormill.stores.settings import StoreSettings

from .cli_process import VECTORMILL

DIMENSION = 8


# ---- statistics (pure) -----------------------------------------------------------------------
def unit_rows(rng, count, center, spread=0.3, dimension=DIMENSION):
    rows = np.asarray(center, dtype=np.float64) + spread * rng.standard_normal((count, dimension))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def profile_of(vectors, keys=None, tokens=None, settings=DriftSettings(sample_vectors=64, similarity_sample=32)):
    profile = DriftProfile(vectors.shape[1], settings)
    keys = list(range(len(vectors))) if keys is None else keys
    tokens = [10] * len(vectors) if tokens is None else tokens
    for start in range(0, len(vectors), 7):  # several calls, as batches arrive
        profile.add(keys[start:start + 7], vectors[start:start + 7], tokens[start:start + 7])
    return profile


def test_profile_figures_are_exact_for_what_every_vector_contributes():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((200, DIMENSION)).astype(np.float32)
    tokens = list(rng.integers(5, 60, size=200))
    stats = profile_of(vectors, tokens=tokens).stats()

    assert stats["vectors"] == 200
    assert np.allclose(stats["centroid"], vectors.astype(np.float64).mean(axis=0), atol=1e-6)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    assert stats["norm"]["mean"] == pytest.approx(norms.mean(), abs=1e-6)
    assert stats["norm"]["std"] == pytest.approx(norms.std(), abs=1e-5)
    assert stats["tokens"]["mean"] == pytest.approx(np.mean(tokens), abs=1e-3)
    assert stats["tokens"]["std"] == pytest.approx(np.std(tokens), abs=1e-3)
    assert stats["tokens"]["max"] == max(tokens)
    assert stats["tokens"]["p50"] == int(np.quantile(tokens, 0.5, method="inverted_cdf"))
    json.dumps(stats)  # plain JSON data, as the store keeps it


def test_the_sample_is_bounded_and_the_lowest_keys_whatever_the_order():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, DIMENSION)).astype(np.float32)
    keys = [int(k) for k in rng.integers(0, 2**63, size=300)]
    order = rng.permutation(300)

    forward = profile_of(vectors, keys).stats()
    shuffled = profile_of(vectors[order], [keys[i] for i in order]).stats()

    assert forward["sample_vectors"] == 64
    assert len(forward["similarity"]["sample"]) == 32
    lowest = vectors[np.argsort(keys)[:64]]
    similarities = pairwise_similarities(lowest)
    assert forward["similarity"]["mean"] == pytest.approx(similarities.mean(), abs=1e-6)
    assert forward["similarity"]["std"] == pytest.approx(similarities.std(), abs=1e-6)
    assert set(forward["similarity"]["sample"]) <= set(np.round(similarities, 6).tolist())
    for key in ("similarity", "norm", "tokens", "vectors"):
        assert shuffled[key] == forward[key]
    assert np.allclose(shuffled["centroid"], forward["centroid"], atol=1e-6)


def test_pairwise_similarities_and_token_quantiles_by_hand():
    assert np.allclose(pairwise_similarities(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])),
                       [0.0, np.sqrt(0.5), np.sqrt(0.5)])
    histogram = np.bincount([4, 4, 6, 8, 20])
    assert token_summary(histogram) == {"mean": 8.4, "std": pytest.approx(5.9866, abs=1e-3), "p10": 4, "p50": 6,
                                        "p90": 20, "max": 20}
    assert sampling_key("00000000000000ff" + "0" * 16) == 255


def test_a_sample_of_the_same_distribution_is_ok_and_a_moved_or_reshaped_one_drifts():
    rng = np.random.default_rng(3)
    settings = DriftSettings(sample_vectors=256, similarity_sample=256, min_vectors=32)
    center = np.ones(DIMENSION)
    other = np.r_[np.ones(DIMENSION // 2), -np.ones(DIMENSION // 2)]
    baseline = profile_of(unit_rows(rng, 400, center), settings=settings).stats()

    same = compare(profile_of(unit_rows(rng, 400, center), settings=settings).stats(), baseline, settings)
    moved = compare(profile_of(unit_rows(rng, 400, other), settings=settings).stats(), baseline, settings)
    # Same centre, tighter cloud: the centroid barely moves, the similarities do.
    tighter = compare(profile_of(unit_rows(rng, 400, center, spread=0.1), settings=settings).stats(), baseline, settings)

    assert same.status == "ok" and not same.drifted and same.reasons == ()
    assert same.centroid_cosine > 0.99 and same.ks_statistic < 0.15
    assert moved.drifted and moved.centroid_cosine < 0.2
    assert any("centroid cosine" in reason for reason in moved.reasons)
    assert tighter.drifted and tighter.centroid_cosine > 0.95 and tighter.ks_statistic > 0.5
    assert [r for r in tighter.reasons if r.startswith("KS statistic")]
    assert tighter.ks_pvalue < 1e-6 < same.ks_pvalue
    summary = tighter.as_dict()
    assert summary["status"] == "drift" and "max_ks_statistic 0.3" in summary["reasons"]


def test_runs_with_too_few_vectors_are_recorded_but_not_judged():
    rng = np.random.default_rng(4)
    settings = DriftSettings(min_vectors=50)
    baseline = profile_of(unit_rows(rng, 400, np.ones(DIMENSION))).stats()
    small = profile_of(unit_rows(rng, 20, -np.ones(DIMENSION))).stats()

    result = compare(small, baseline, settings)

    assert result.status == "not compared" and not result.drifted
    assert result.centroid_cosine is None and "20 vectors" in result.reasons[0]
    with pytest.raises(ValueError, match="no vectors"):
        DriftProfile(DIMENSION, settings).stats()


def test_drift_settings_are_checked():
    with pytest.raises(ValidationError):
        DriftSettings(max_ks_statistic=0)
    with pytest.raises(ValidationError):
        DriftSettings(sample_vectors=100_000)
    with pytest.raises(ValidationError):
        DriftSettings(threshold=0.5)


# ---- the store keeps baselines -----------------------------------------------------------------
def test_baselines_are_logged_replayed_checkpointed_and_replaced_per_run(tmp_path):
    settings = StoreSettings(path=tmp_path / "store")
    stats = {"vectors": 3, "centroid": [0.5, -0.25], "similarity": {"sample": [0.1, 0.2]}}
    first = BaselineRecord("docs", "run-1", "2026-01-01T00:00:00+00:00", stats)
    second = BaselineRecord("docs", "run-2", "2026-01-02T00:00:00+00:00", {**stats, "vectors": 4})
    other = BaselineRecord("wiki", "run-2", "2026-01-02T00:00:00+00:00", stats)

    with FaissStore.open(settings, model="m", dimension=2) as store:
        store.write([first])
        store.checkpoint()
        store.write([second, other])  # not checkpointed
    with FaissStore.open(settings, model="m", dimension=2) as store:
        assert store.baselines("docs") == [first, second]
        assert store.baselines() == [first, second, other]
        store.write([BaselineRecord("docs", "run-2", second.created_at, {**stats, "vectors": 5})])
        store.checkpoint()
    with FaissStore.open(settings, writable=False) as store:
        assert [b.stats["vectors"] for b in store.baselines("docs")] == [3, 5]
        assert store.baselines("nothing") == []


# ---- real runs --------------------------------------------------------------------------------
# Two English corpora of the same kind (workplace and IT notes, no sentence shared) and a German one.
ENGLISH_A = [
    "The backup job copies the billing database to the second data centre every night at two.",
    "New employees receive their laptop and badge from the front desk on their first morning.",
    "Expense reports must include a scanned receipt for every item above twenty euros.",
    "The VPN client asks for a one-time code from the authenticator app at each login.",
    "Meeting rooms on the third floor can be booked through the shared calendar.",
    "Printers in the east wing are serviced on the first Tuesday of each month.",
    "Passwords expire after ninety days and cannot repeat any of the last five.",
    "The support desk answers tickets within four working hours during the week.",
    "Visitors sign in at reception and are accompanied by their host at all times.",
    "Quarterly planning starts with a review of the goals the team set last quarter.",
    "Software licences are requested through the IT portal and approved by a manager.",
    "The office closes at eight in the evening; the alarm is armed at half past eight.",
    "Incident reports list the timeline, the impact on customers and the follow-up actions.",
    "The staging servers are rebuilt from scratch every Sunday to catch configuration drift.",
    "Holiday requests go to the team lead at least two weeks before the first day off.",
    "Each project keeps its design documents in the wiki space named after the project.",
    "The canteen serves a vegetarian dish every day and fish on Fridays.",
    "Monitoring alerts page the engineer on call when the error rate stays high for five minutes.",
    "Shared drives are cleaned up once a year; files untouched for three years are archived.",
    "The finance team closes the books on the fifth working day of each month.",
    "Security training is mandatory for all staff and is repeated every twelve months.",
    "Parking spaces in the basement are reserved for car sharing and electric vehicles.",
    "Code changes need one approving review and a green build before they are merged.",
    "The newsletter summarises company news and is sent to everyone on Thursday afternoon.",
]
ENGLISH_B = [
    "Database snapshots are kept for thirty days and tested by restoring one each week.",
    "A new starter's accounts are created by IT two days before the contract begins.",
    "Travel must be booked through the approved agency unless a cheaper fare is documented.",
    "Remote access to the internal network requires the company certificate on the device.",
    "Large meetings with external guests are held in the conference hall on the ground floor.",
    "Toner cartridges are ordered by the office manager when a printer reports low supply.",
    "Accounts are locked after ten failed sign-in attempts and unlocked by the help desk.",
    "Urgent problems outside business hours are reported to the emergency phone line.",
    "Contractors receive a temporary badge that expires on the last day of their assignment.",
    "Yearly budgets are drafted in October and approved by the board in December.",
    "Hardware purchases above one thousand euros need approval from the department head.",
    "The building is cleaned every evening after the last employees have left.",
    "After an outage, the post-mortem names the root cause and who owns each fix.",
    "Test environments are refreshed with anonymised production data once a month.",
    "Sick leave longer than three days requires a note from a doctor.",
    "Architecture decisions are recorded with their context and the options that were rejected.",
    "Fresh fruit and coffee are available in the kitchen on every floor.",
    "Dashboards show request latency, error counts and queue length for every service.",
    "Old email is moved to the archive after two years and deleted after ten.",
    "Invoices are paid within thirty days of receipt unless the contract says otherwise.",
    "Phishing exercises are run twice a year and the results are shared with each team.",
    "Bicycles can be left in the locked storage room next to the loading bay.",
    "Release notes describe every change that users will notice in the new version.",
    "The all-hands meeting takes place on the last Friday of the month in the main hall.",
]
GERMAN = [
    "Die Datensicherung kopiert die Kundendatenbank jede Nacht um zwei Uhr ins zweite Rechenzentrum.",
    "Neue Mitarbeiter erhalten am ersten Morgen ihren Laptop und ihren Ausweis am Empfang.",
    "Spesenabrechnungen brauchen für jeden Posten über zwanzig Euro einen eingescannten Beleg.",
    "Der VPN-Zugang verlangt bei jeder Anmeldung einen Einmalcode aus der Authentifizierungs-App.",
    "Besprechungsräume im dritten Stock werden über den gemeinsamen Kalender gebucht.",
    "Die Drucker im Ostflügel werden am ersten Dienstag jedes Monats gewartet.",
    "Passwörter laufen nach neunzig Tagen ab und dürfen keines der letzten fünf wiederholen.",
    "Der Helpdesk beantwortet Anfragen werktags innerhalb von vier Arbeitsstunden.",
    "Besucher melden sich am Empfang an und werden jederzeit von ihrem Gastgeber begleitet.",
    "Die Quartalsplanung beginnt mit einem Rückblick auf die Ziele des letzten Quartals.",
    "Softwarelizenzen werden über das IT-Portal beantragt und von der Führungskraft genehmigt.",
    "Das Büro schließt um acht Uhr abends, die Alarmanlage wird um halb neun scharf geschaltet.",
    "Störungsberichte enthalten den zeitlichen Ablauf, die Auswirkungen auf Kunden und die Folgemaßnahmen.",
    "Die Testserver werden jeden Sonntag neu aufgesetzt, um abweichende Konfigurationen zu finden.",
    "Urlaubsanträge gehen mindestens zwei Wochen vor dem ersten freien Tag an die Teamleitung.",
    "Jedes Projekt legt seine Entwurfsdokumente im Wiki-Bereich mit dem Namen des Projekts ab.",
    "Die Kantine bietet jeden Tag ein vegetarisches Gericht und freitags Fisch an.",
    "Überwachungsalarme rufen die Bereitschaft, wenn die Fehlerquote fünf Minuten lang hoch bleibt.",
    "Gemeinsame Laufwerke werden einmal im Jahr aufgeräumt, alte Dateien werden archiviert.",
    "Die Buchhaltung schließt die Bücher am fünften Arbeitstag jedes Monats ab.",
    "Die Sicherheitsschulung ist für alle Mitarbeiter Pflicht und wird jährlich wiederholt.",
    "Die Parkplätze im Untergeschoss sind für Carsharing und Elektroautos reserviert.",
    "Codeänderungen brauchen eine Freigabe im Review und einen erfolgreichen Build vor dem Zusammenführen.",
    "Der Newsletter fasst die Neuigkeiten zusammen und wird donnerstagnachmittags verschickt.",
]


def write_notes(folder: Path, sentences: list[str]) -> None:
    """One note per sentence, each with two more sentences of the same pool: 24 short documents."""
    for old in folder.glob("*.txt"):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    count = len(sentences)
    for index in range(count):
        text = " ".join(sentences[(index + step) % count] for step in (0, 7, 13))
        (folder / f"note{index:02d}.txt").write_text(text + "\n")


def write_drift_config(folder: Path) -> Path:
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n\n[chunking]\ntokens = 24\noverlap = 4\n\n'
                      '[embedding]\ntask_chunks = 32\n\n'
                      '[[sources]]\nname = "notes"\ntype = "filesystem"\nroot = "notes"\nfetch_batch_size = 8\n')
    return config


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_over_another_language_drifts_and_one_over_the_same_kind_does_not(tmp_path, caplog):
    from vectormill.flows.ingest import ingest

    write_notes(tmp_path / "notes", ENGLISH_A)
    config = write_drift_config(tmp_path)
    drift = load_config(config).drift
    runs = []
    # The drift is logged by the source's task run (each source runs in a task of its own); Prefect's
    # flow-run logger does not propagate to the root logger.
    run_logs = [logging.getLogger("prefect.flow_runs"), logging.getLogger("prefect.task_runs")]
    for run_log in run_logs:
        run_log.addHandler(caplog.handler)
    try:
        for corpus in (ENGLISH_A, ENGLISH_B, GERMAN):
            write_notes(tmp_path / "notes", corpus)
            caplog.clear()
            summary = ingest(config_file=str(config))
            # A set: the record may also reach caplog through the root logger, once logging propagates.
            runs.append((summary, sorted({r.getMessage() for r in caplog.records
                                          if r.getMessage().startswith("source notes: embeddings drifted")})))
    finally:
        for run_log in run_logs:
            run_log.removeHandler(caplog.handler)
    (first, first_logs), (same, same_logs), (german, german_logs) = runs
    print({"same kind": same["drift"]["notes"], "other language": german["drift"]["notes"]})

    assert first["drift"] == {"notes": {"status": "first baseline", "vectors": first["chunks_embedded"]}}
    assert first["chunks_embedded"] >= drift.min_vectors
    assert same["drift"]["notes"]["status"] == "ok", same["drift"]
    assert same["drift"]["notes"]["centroid_cosine"] >= drift.min_centroid_cosine
    assert same["drift"]["notes"]["ks_statistic"] <= drift.max_ks_statistic
    assert same["warnings"] == [] and same_logs == [] and first_logs == []

    figures = german["drift"]["notes"]
    assert figures["status"] == "drift", figures
    assert figures["baseline_vectors"] == same["chunks_embedded"] and figures["vectors"] == german["chunks_embedded"]
    assert len(german_logs) == 1 and "centroid cosine" in german_logs[0]
    assert f"{figures['centroid_cosine']:.3f}" in german_logs[0]
    assert len(german["warnings"]) == 1 and "notes" in german["warnings"][0] and "drifted" in german["warnings"][0]

    with FaissStore.open(load_config(config).store, writable=False) as store:
        history = store.baselines("notes")
    assert [b.stats["vectors"] for b in history] == [s["chunks_embedded"] for s, _ in runs]
    assert figures["baseline_run"] == history[1].run_id

    # The history on the command line, without Prefect.
    shown = subprocess.run([VECTORMILL, "drift", "--json", "--config", str(config)], capture_output=True, text=True,
                           env={**os.environ, "PREFECT_API_URL": ""})
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [row["status"] for row in rows] == ["first baseline", "ok", "drift"]
    assert rows[2]["centroid_cosine"] == pytest.approx(figures["centroid_cosine"])
    assert rows[2]["run_id"] == history[2].run_id
    table = subprocess.run([VECTORMILL, "drift", "--source", "notes", "--config", str(config)],
                           capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and "drift" in table.stdout and history[2].run_id[:8] in table.stdout
    missing = subprocess.run([VECTORMILL, "drift", "--source", "wiki", "--config", str(config)],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no baselines for source 'wiki'" in missing.stderr


def test_the_drift_command_does_not_import_prefect(tmp_path):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom vectormill.cli.main import app\n"
            "result = CliRunner().invoke(app, ['drift', '--json', '--config', 'vectormill.toml'])\n"
            "print(result.output)\n"
            "print(result.exit_code, 'PREFECT LOADED' if 'prefect' in sys.modules else 'NO PREFECT')")
    (tmp_path / "notes").mkdir()
    write_drift_config(tmp_path)
    with FaissStore.open(load_config(tmp_path / "vectormill.toml").store, model="m", dimension=2) as store:
        store.write([BaselineRecord("notes", "run-1", "2026-01-01T00:00:00+00:00",
                                    profile_of(np.eye(2, dtype=np.float32)).stats())])
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    *output, last = result.stdout.strip().splitlines()
    assert last == "0 NO PREFECT", result.stdout + result.stderr[-2000:]
    assert [row["run_id"] for row in json.loads("".join(output))] == ["run-1"]
