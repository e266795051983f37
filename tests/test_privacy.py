"""Privacy: export everything a home holds, purge it for good (CLI, real store)."""
from cli_helpers import run_cli


def test_export_then_purge(tmp_path):
    home = tmp_path / "home"
    assert run_cli("init", home=home).code == 0
    a = run_cli("remember", "The user's dentist is Dr. Okafor.", "--json", home=home).json()
    run_cli("remember", "Web says the moon is cheese.", "--source", "web", "--untrusted", home=home)
    data = run_cli("export", home=home).json()
    eps = {e["text"]: e for e in data["episodes"]}
    assert eps["The user's dentist is Dr. Okafor."]["id"] in str(a)
    assert eps["Web says the moon is cheese."]["source"] == "web" and eps["Web says the moon is cheese."]["trust"] == "untrusted"
    assert [v["version"] for v in data["versions"]] == ["v0000"] and data["current_version"] == "v0000"
    out = tmp_path / "export.json"
    r = run_cli("export", "--out", str(out), home=home)
    assert r.code == 0 and "exported 2 episodes" in r.err and out.is_file()
    assert "export" in run_cli("export", "--out", str(out / "x.json"), home=home).one_line_error()

    refused = run_cli("purge", home=home).one_line_error()
    assert "--yes" in refused and home.is_dir()
    assert run_cli("status", "--json", home=home).json()["episodes"] == 2  # nothing lost by the refusal
    done = run_cli("purge", "--yes", "--json", home=home).json()
    assert done == {"purged": str(home.resolve()), "episodes": 2, "versions": 1} or done["episodes"] == 2
    assert not home.exists()
