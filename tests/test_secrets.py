"""Secrets in settings never reach the Landscape in clear: a keyed HMAC fingerprint (or ***
without a key) stands in for them, in settings_json, the nodes' config and the settings hash."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from elspeth_beam import testing
from elspeth_beam.config.loader import load_settings_dict
from elspeth_beam.config.secrets import KEY_ENV, Fingerprinter, SecretsRecorded
from elspeth_beam.core.canonical import canonical_json
from elspeth_beam.landscape import schema as s
from elspeth_beam.landscape.store import LandscapeStore
from elspeth_beam.inspect.verify import verify_run
from elspeth_beam.resume import ResumeRefusedError, settings_for

REPO = Path(__file__).resolve().parent.parent
KEY = "k3y-for-tests-0f9e8d7c6b5a"
API_KEY = "AKIA-sup3r-s3cret-0042"
SEED = "correct horse battery staple"
PIN = 9182736450
URL_PASSWORD = "pa55-in-url"


def _fp(value: str | bytes, key: str = KEY) -> str:
    data = value.encode() if isinstance(value, str) else value
    return "hmac-sha256:" + hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def _settings(tmp: Path, api_key: str = API_KEY) -> dict[str, Any]:
    data = tmp / "in.jsonl"
    data.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(5)))
    return {
        "source": {"plugin": "jsonl", "on_success": "raw", "options": {"path": str(data)}},
        "transforms": [{"name": "tag", "plugin": "plugins_for_tests.Secretive", "input": "raw", "on_success": "out",
                        "on_error": "quarantine",
                        "options": {"api_key": api_key, "seed_phrase": SEED, "pin": PIN,
                                    "endpoint": f"https://svc:{URL_PASSWORD}@api.example/v1", "label": "visible-label"}}],
        "sinks": {"out": {"plugin": "jsonl", "options": {"path": str(tmp / "out" / "out.jsonl")}}},
    }


SECRETS = (API_KEY, SEED, URL_PASSWORD, str(PIN))


def test_no_secret_reaches_the_database_file_and_fingerprints_do(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    run = testing.run_for_test(_settings(tmp_path), tmp_path)
    testing.assert_audit_complete(run)
    recorded = run.store.run(run.run_id)
    nodes = {n["node_id"]: n for n in run.store.table_rows(s.nodes, run.run_id)}
    run.store.dispose()

    db = tmp_path / "landscape.db"
    raw = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert len(raw) > 10_000
    for secret in (API_KEY, SEED, URL_PASSWORD):
        assert secret.encode() not in raw, secret
    assert str(PIN).encode() not in raw
    assert KEY.encode() not in raw
    assert b"visible-label" in raw  # the search would find what is there

    options = json.loads(recorded["settings_json"])["transforms"][0]["options"]
    assert options["api_key"] == _fp(API_KEY)
    assert options["seed_phrase"] == _fp(SEED)
    assert options["pin"] == _fp(canonical_json(PIN))
    assert options["endpoint"] == f"https://svc:{_fp(URL_PASSWORD)}@api.example/v1"
    assert options["label"] == "visible-label"
    for fingerprint in (_fp(API_KEY), _fp(SEED)):
        assert fingerprint.encode() in raw
    node_options = json.loads(nodes["transform:tag"]["config_json"])["options"]
    assert node_options == options

    report = verify_run(LandscapeStore(str(db)), run.run_id)
    assert report.ok
    assert "  secrets: 4 fingerprinted (hmac-sha256, keyed by ELSPETH_FINGERPRINT_KEY)" in report.text()


def test_same_secret_and_key_give_the_same_fingerprint_a_different_secret_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    a, b = load_settings_dict(_settings(tmp_path)), load_settings_dict(_settings(tmp_path))
    other = load_settings_dict(_settings(tmp_path, api_key=API_KEY + "-rotated"))
    assert a.settings_json == b.settings_json and a.settings_hash == b.settings_hash
    opts = lambda loaded: json.loads(loaded.settings_json)["transforms"][0]["options"]  # noqa: E731
    assert opts(other)["api_key"] == _fp(API_KEY + "-rotated") != opts(a)["api_key"]
    assert opts(other)["seed_phrase"] == opts(a)["seed_phrase"]
    # a changed secret is a changed setting, for resume
    assert other.settings_hash != a.settings_hash
    first = opts(a)["api_key"]
    monkeypatch.setenv(KEY_ENV, "another-key")
    assert opts(load_settings_dict(_settings(tmp_path)))["api_key"] == _fp(API_KEY, "another-key") != first


def test_without_a_key_secrets_are_redacted_and_the_run_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    loaded = load_settings_dict(_settings(tmp_path))
    options = json.loads(loaded.settings_json)["transforms"][0]["options"]
    assert options["api_key"] == options["seed_phrase"] == options["pin"] == "***"
    assert options["endpoint"] == "https://svc:***@api.example/v1"
    assert SecretsRecorded.of(loaded.settings_json) == SecretsRecorded(fingerprinted=0, redacted=4)
    # not comparable: a different secret gives the same record and hash
    assert load_settings_dict(_settings(tmp_path, api_key="other")).settings_hash == loaded.settings_hash

    with caplog.at_level(logging.WARNING):
        run = testing.run_for_test(_settings(tmp_path), tmp_path)
    assert any(KEY_ENV in r.getMessage() and "4 secret value(s)" in r.getMessage() for r in caplog.records)
    report = verify_run(run.store, run.run_id)
    assert report.ok  # hiding without a fingerprint is allowed, and reported
    assert "  secrets: 4 redacted as ***, not fingerprinted (ELSPETH_FINGERPRINT_KEY was not set)" in report.text()
    run.store.dispose()


def test_settings_hash_does_not_depend_on_the_clear_secret_only_on_its_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    loaded = load_settings_dict(_settings(tmp_path))
    raw = loaded.settings.model_dump(mode="json", exclude={"landscape"})
    protected = json.loads(json.dumps(raw))
    opts = protected["transforms"][0]["options"]
    opts.update(api_key=_fp(API_KEY), seed_phrase=_fp(SEED), pin=_fp(canonical_json(PIN)),
                endpoint=f"https://svc:{_fp(URL_PASSWORD)}@api.example/v1")
    from elspeth_beam.core.canonical import stable_hash

    assert loaded.settings_hash == stable_hash(protected)
    assert loaded.settings_hash != stable_hash(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"password": "p", "nested": {"client_secret": "c", "token_count": 3}}, {"password": "F(p)", "nested": {"client_secret": "F(c)", "token_count": 3}}),
        (["--hdfs_password=pw", "--runner=Direct"], ["--hdfs_password=F(pw)", "--runner=Direct"]),
        ("postgresql://user:pw@host/db", "postgresql://user:F(pw)@host/db"),
        ({"url": "sqlite:///runs/landscape.db", "max_tokens": 5}, {"url": "sqlite:///runs/landscape.db", "max_tokens": 5}),
    ],
)
def test_what_counts_as_a_secret(value, expected):
    fp = Fingerprinter(KEY.encode())
    text = json.dumps(expected)
    for clear in ("p", "c", "pw"):
        text = text.replace(f"F({clear})", _fp(clear))
    assert fp.protect(value) == json.loads(text)


def _recorded_run(store: LandscapeStore, tmp: Path) -> None:
    loaded = load_settings_dict(_settings(tmp), landscape_url=store.url)
    store.begin_run(run_id="r", settings_json=loaded.settings_json, settings_hash=loaded.settings_hash, runner="t",
                    beam_options={}, nodes=[], edges=[])


def test_resume_checks_secrets_through_their_fingerprints(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    _recorded_run(store, tmp_path)
    with pytest.raises(ResumeRefusedError, match="secrets hidden; pass its settings file with --settings"):
        settings_for(store, "r", None)
    same = load_settings_dict(_settings(tmp_path), landscape_url=store.url)
    assert settings_for(store, "r", same) is same
    changed = load_settings_dict(_settings(tmp_path, api_key="rotated"), landscape_url=store.url)
    with pytest.raises(ResumeRefusedError, match="settings differ .*secrets compare by fingerprint: is ELSPETH_FINGERPRINT_KEY the key the run used"):
        settings_for(store, "r", changed)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ResumeRefusedError, match="set ELSPETH_FINGERPRINT_KEY to the key it ran with"):
        settings_for(store, "r", same)
    store.dispose()


def test_resume_of_a_run_recorded_without_key_compares_redacted_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    store = LandscapeStore(f"sqlite:///{tmp_path / 'l.db'}")
    _recorded_run(store, tmp_path)
    monkeypatch.setenv(KEY_ENV, KEY)  # a key set later does not make the run's own settings "different"
    same = load_settings_dict(_settings(tmp_path), landscape_url=store.url)
    assert settings_for(store, "r", same) is same
    store.dispose()
