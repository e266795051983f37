"""Migrating a home's episodes embedded -> Chroma server -> embedded: nothing lost, recall unchanged."""
from agentsleep.config import Config, MemoryConfig
from agentsleep.home import Home
from agentsleep.memory.migrate import migrate
from cli_helpers import run_cli

LONG = "Notes from the planning meeting. " * 60  # chunked into several linked episodes


def _snapshot(h: Home):
    return sorted((e.id, e.text, e.kind, e.source, e.trust, e.consolidated_in) for e in h.episodes())


def test_round_trip_embedded_server_embedded(chroma_server, tmp_path):
    host, port = chroma_server
    root = Home.init(tmp_path / "home")
    with Home.open(root) as h:
        a = h.remember("The user's dog is a beagle called Biscuit.").id
        h.remember("Web page: the moon is cheese.", source="web", trust="untrusted")
        h.remember(LONG, kind="observation")
        h.store.ledger.mark([a], "v0001", "s1")
        before = _snapshot(h)
        top = [e.id for e in h.recall("What is my dog called?", k=1)]  # (the long note's chunks are identical: ties)
        r = migrate(h, MemoryConfig(backend="server", host=host, port=port, collection="migrate_rt"))
    assert r["episodes"] == r["copied"] == len(before) and len(before) > 3  # the long note is stored in chunks,
    assert r["memories"] == 3                                               # and counts once as a memory
    with Home.open(root) as h:
        assert h.config.memory.backend == "server" and h.config.memory.port == port
        assert _snapshot(h) == before and [e.id for e in h.recall("What is my dog called?", k=1)] == top == [a]
        h.remember("The user's dentist is Dr. Okafor.")
        after_server = _snapshot(h)
        r2 = migrate(h, MemoryConfig(backend="embedded", collection="episodes_back"))
    assert r2["copied"] == len(after_server)
    with Home.open(root) as h:
        assert h.config.memory.backend == "embedded" and _snapshot(h) == after_server
        assert dict((e[0], e[5]) for e in _snapshot(h))[a] == "v0001"  # consolidation state kept


def test_migrate_refusals_keep_the_old_store(chroma_server, tmp_path):
    host, port = chroma_server
    other = Home.init(tmp_path / "other", config=Config.model_validate(
        {"memory": {"backend": "server", "host": host, "port": port, "collection": "migrate_busy"}}))
    with Home.open(other) as o:
        o.remember("Someone else's memory.")
    root = Home.init(tmp_path / "home")
    with Home.open(root) as h:
        h.remember("The user's wifi is OrangeFox.")
    same = run_cli("migrate", "--to", "embedded", home=root).one_line_error()
    assert "already uses this store" in same
    busy = run_cli("migrate", "--to", "server", "--host", host, "--port", str(port), "--collection", "migrate_busy",
                   home=root).one_line_error()
    assert "holds another home's episodes" in busy  # the collection is claimed by the home that wrote it
    import chromadb

    from agentsleep.memory.embedder import MiniLMEmbedding

    raw = chromadb.HttpClient(host=host, port=port).get_or_create_collection("migrate_foreign",
                                                                            embedding_function=MiniLMEmbedding())
    raw.add(ids=["x1"], documents=["Written by some other program."])  # no home claims it
    foreign = run_cli("migrate", "--to", "server", "--host", host, "--port", str(port), "--collection",
                      "migrate_foreign", home=root).one_line_error()
    assert "already holds 1 other episodes" in foreign
    client = chromadb.HttpClient(host=host, port=port)
    assert "agentsleep_store" not in (client.get_collection("migrate_foreign").metadata or {})  # left as it was
    bad = run_cli("migrate", "--to", "cloud", home=root).one_line_error()
    assert "embedded" in bad
    short = run_cli("migrate", "--to", "server", "--host", host, "--port", str(port), "--collection", "ab", home=root)
    assert short.code == 2 and "collection" in short.one_line_error()  # not "internal error: ValidationError"
    with Home.open(root) as h:
        assert h.config.memory.backend == "embedded" and [e.text for e in h.episodes()] == ["The user's wifi is OrangeFox."]
    ok = run_cli("migrate", "--to", "server", "--host", host, "--port", str(port), "--collection", "migrate_cli", "--json",
                 home=root).json()
    assert ok["episodes"] == 1 and ok["to"] == f"server {host}:{port}:migrate_cli"
    from agentsleep.memory.ledger import Ledger

    mine = Ledger(root / "memory" / "ledger.sqlite").store_id(create=False)
    assert mine and client.get_collection("migrate_cli").metadata["agentsleep_store"] == mine  # claimed once copied


def test_a_token_from_the_environment_is_not_written_to_the_config(chroma_server, tmp_path):
    host, port = chroma_server
    root = Home.init(tmp_path / "home")
    with Home.open(root) as h:
        h.remember("The user's locker is 12.")
    r = run_cli("migrate", "--to", "server", "--host", host, "--port", str(port), "--collection", "migrate_env",
                home=root, env={"AGENTSLEEP_CHROMA_TOKEN": "s3cret-from-env"})
    assert r.code == 0, r.err
    text = (root / "config.toml").read_text()
    assert "server" in text and "s3cret-from-env" not in text and "token" not in text
    assert "AGENTSLEEP_MEMORY__TOKEN" in r.out  # told how the later commands get it
