import pytest

from vectormill.flows.config import ConfigError, load_config, parse_config

MINIMAL = '[store]\npath = "store"\n\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\n'


def test_minimal_contract_file_loads_with_defaults(tmp_path):
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "vectormill.toml").write_text(MINIMAL)
    config = load_config(tmp_path / "vectormill.toml", environ={})
    assert config.store.path == tmp_path / "store"  # relative to the config file, not the cwd
    source = config.sources[0]
    assert (source.name, source.type, source.root) == ("docs", "filesystem", tmp_path / "pdfs")
    assert source.include == ("**/*",) and "docx" in source.formats and "pdf" in source.formats
    assert source.max_failed_ratio == 0.5
    assert config.embedding.model == "all-MiniLM-L6-v2"
    assert config.chunking.tokens is None and config.chunking.overlap > 0


def test_a_url_root_is_kept_as_it_is_written_not_joined_with_the_config_folder(tmp_path):
    (tmp_path / "vectormill.toml").write_text(MINIMAL.replace('root = "pdfs"', 'root = "s3://bucket/docs"\n'
                                                              'formats = ["docx", "PDF"]'))
    source = load_config(tmp_path / "vectormill.toml", environ={}).sources[0]
    assert (source.root, source.formats) == ("s3://bucket/docs", ("docx", "pdf"))


def test_file_found_through_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "elsewhere.toml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={"VECTORMILL_CONFIG": str(tmp_path / "elsewhere.toml")})
    assert config.sources[0].name == "docs"


def test_environment_overrides_sections_and_named_sources(tmp_path):
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "vectormill.toml").write_text(MINIMAL)
    config = load_config(tmp_path / "vectormill.toml", environ={
        "VECTORMILL_STORE__CHECKPOINT_EVERY_VECTORS": "123",
        "VECTORMILL_EMBEDDING__DEVICE": "cpu",
        "VECTORMILL_SOURCES__DOCS__MAX_FAILED_RATIO": "0.1",
    })
    assert config.store.checkpoint_every_vectors == 123
    assert config.embedding.device == "cpu"
    assert config.sources[0].max_failed_ratio == 0.1


def test_every_problem_is_reported_once_with_its_place(tmp_path):
    data = {
        "sources": [
            {"name": "ftp", "type": "ftp"},
            {"name": "docs", "type": "filesystem", "root": "missing", "colour": "blue"},
        ],
        "chunking": {"tokens": 16, "overlap": 16},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path, environ={})
    problems = caught.value.problems
    assert any(p.startswith("sources[ftp]") and "unknown source type 'ftp'" in p for p in problems)
    assert not any(p.startswith("sources[docs].root") for p in problems)  # a share may be unmounted: runs say so
    assert any(p.startswith("sources[docs].colour") and "unknown key" in p for p in problems)
    assert any(p.startswith("chunking") and "overlap" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_missing_and_malformed_files_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="not found: create one with `vectormill init`"):
        load_config(tmp_path / "nope.toml", environ={})
    (tmp_path / "bad.toml").write_text("[store\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", environ={})


def test_duplicate_source_names_and_unknown_override_are_refused(tmp_path):
    (tmp_path / "pdfs").mkdir()
    twice = {"sources": [{"name": "a", "type": "filesystem", "root": "pdfs"}] * 2}
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config(twice, tmp_path, environ={})
    with pytest.raises(ConfigError, match="no source named 'ghost'"):
        parse_config({"sources": []}, tmp_path, environ={"VECTORMILL_SOURCES__GHOST__ROOT": "/"})
