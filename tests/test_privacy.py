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
    assert r.code == 0 and "exported 2 memories (2 stored chunks)" in r.err and out.is_file()
    assert "export" in run_cli("export", "--out", str(out / "x.json"), home=home).one_line_error()
    assert out.stat().st_mode & 0o777 == 0o600  # every memory of the home: its owner's only
    link = tmp_path / "link.json"
    link.symlink_to(out)
    for bad in (tmp_path, link, home / "config.toml", home / "memory" / "new.json"):
        msg = run_cli("export", "--out", str(bad), home=home).one_line_error()
        assert "export: --out" in msg, (bad, msg)
    assert link.is_symlink() and (home / "config.toml").read_text().strip() != ""
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    refused = run_cli("purge", home=home).one_line_error()
    assert "--yes" in refused and home.is_dir()
    assert run_cli("status", "--json", home=home).json()["episodes"] == 2  # nothing lost by the refusal
    done = run_cli("purge", "--yes", "--json", home=home).json()
    assert done == {"purged": str(home.resolve()), "episodes": 2, "versions": 1} or done["episodes"] == 2
    assert not home.exists()


def test_purge_deletes_what_agentsleep_wrote_and_nothing_else(tmp_path):
    home = tmp_path / "home"
    assert run_cli("remember", "The user's locker is 12.", home=home).code == 0
    (home / "my-notes.txt").write_text("mine")  # put there by the user
    (home / "langgraph").mkdir()  # what the LangGraph store and a killed server leave are agentsleep's
    (home / "langgraph" / "items.sqlite").write_text("items")
    (home / "serve.json").write_text("{}")
    done = run_cli("purge", "--yes", "--json", home=home).json()
    assert done["episodes"] == 1 and done["kept"] == ["my-notes.txt"]
    assert sorted(p.name for p in home.iterdir()) == ["my-notes.txt"]


def test_a_home_whose_creation_or_purge_was_cut_short_is_still_a_home(tmp_path):
    home = tmp_path / "home"
    (home / "sleeps" / "s1").mkdir(parents=True)  # a purge stopped after the marks went: reports remain
    (home / "logs").mkdir()
    assert run_cli("purge", "--yes", home=home).code == 0 and not home.exists()


def test_purge_deletes_the_episodes_a_chroma_server_holds(chroma_server, tmp_path):
    """A server-backed home keeps its episodes outside its folder: purge deletes them there too, or a home
    created again with the same settings would find every purged episode."""
    from agentsleep.config import Config, MemoryConfig
    from agentsleep.home import Home
    from agentsleep.memory.store import EpisodeStore
    from tiny import tiny_model_dir

    host, port = chroma_server
    mem = {"backend": "server", "host": host, "port": port, "collection": "purge_me"}
    cfg = Config.model_validate({"model": {"base": str(tiny_model_dir(tmp_path / "models"))}, "memory": mem})
    with Home.open(Home.init(tmp_path / "home", config=cfg)) as h:
        h.remember("Zephyrine's locker code is 4471.")
        h.remember("The spare key is under the blue flowerpot.")
        done = h.purge()
    assert done["episodes"] == 2 and done["server_collection"] == f"{host}:{port}/purge_me"
    again = EpisodeStore(MemoryConfig(**mem), root=tmp_path / "again")
    assert again.count() == 0 and again.recall("locker code", k=5) == []
    again.close()
