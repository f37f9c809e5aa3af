"""`curate query`: DuckDB views over scores, manifest, shards and runs' batches, and every output format."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import unit, write_scores
from conftest import run_cli

from curate.errors import CurateError
from curate.query import QuerySources, run_query, write_result
from curate.select import SelectConfig, read_manifest, select
from curate.train import DataConfig, OptimConfig, TrainConfig, train
from curate.train.run import BatchLog, read_batches


@pytest.fixture(scope="module")
def folders(small_synth, tmp_path_factory) -> dict[str, Path]:
    """Scores (random embeddings, no model) for every sample of small_synth's shards, and a manifest."""
    root = tmp_path_factory.mktemp("query")
    web = Path(small_synth) / "web"
    rng = np.random.default_rng(0)
    for table_path in sorted(web.glob("*.parquet")):
        keys = pq.read_table(table_path, columns=["key"])["key"].to_pylist()
        image, text = unit(rng.normal(size=(len(keys), 8))), unit(rng.normal(size=(len(keys), 8)))
        write_scores(root / "scores", f"{table_path.stem}.tar", keys, image, text)
    select(str(root / "scores"), str(root / "manifest"), SelectConfig(ratio=0.5, super_batch=50, chunks=2))
    return {"scores": root / "scores", "manifest": root / "manifest", "shards": web}


def rows(sql: str, **sources) -> list[dict]:
    given = {k: tuple(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in sources.items()}
    with run_query(sql, QuerySources(**given)) as reader:
        return reader.read_all().to_pylist()


def test_views_join_scores_manifest_and_shards(folders):
    chosen = read_manifest(folders["manifest"])["key"].to_pylist()
    noise = {
        k: n
        for p in sorted(folders["shards"].glob("*.parquet"))
        for k, n in zip(*pq.read_table(p, columns=["key", "noise"]).to_pydict().values(), strict=True)
    }
    answer = rows(
        "SELECT s.noise, count(*) AS n FROM manifest JOIN shards s USING (key) GROUP BY 1 ORDER BY 1",
        **folders,
    )
    assert {r["noise"]: r["n"] for r in answer} == dict(Counter(noise[k] for k in chosen))
    assert rows("SELECT count(*) AS n FROM scores", scores=folders["scores"]) == [{"n": 400}]
    histogram = rows(
        "SELECT floor(similarity * 4) / 4 AS bin, count(*) AS n FROM scores GROUP BY 1", **folders
    )
    assert sum(r["n"] for r in histogram) == 400
    top = rows(
        "SELECT caption, m.score FROM manifest m JOIN scores USING (key) ORDER BY m.score DESC LIMIT 3",
        **folders,
    )
    assert len(top) == 3 and top[0]["score"] >= top[2]["score"] and top[0]["caption"].startswith("caption ")


def test_embeddings_read_as_arrays(folders):
    (row,) = rows("SELECT key, image_emb, len(text_emb) AS d FROM scores ORDER BY key LIMIT 1", **folders)
    first = pq.read_table(sorted(folders["scores"].glob("*.parquet"))[0]).slice(0, 1).to_pylist()[0]
    assert row["d"] == 8 and row["image_emb"] == pytest.approx(first["image_emb"])


def test_output_formats(folders, tmp_path):
    sql = "SELECT key, super_batch, round(score, 2) AS score, [1.5, 2.0] AS pair, NULL AS nothing "
    sql += "FROM manifest ORDER BY key LIMIT 5"
    sources = QuerySources(manifest=str(folders["manifest"]))
    text = io.StringIO()
    with run_query(sql, sources) as reader:
        assert write_result(reader, "csv", text) == 5
    parsed = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert len(parsed) == 5 and parsed[0]["pair"] == "[1.5, 2.0]" and parsed[0]["nothing"] == ""
    assert all(len(r["score"].split(".")[-1]) <= 2 for r in parsed)  # float32 printed as typed, not widened

    text = io.StringIO()
    with run_query(sql, sources) as reader:
        write_result(reader, "json", text)
    lines = [json.loads(line) for line in text.getvalue().splitlines()]  # JSON Lines
    assert [r["key"] for r in lines] == [r["key"] for r in parsed] and lines[0]["pair"] == [1.5, 2.0]

    with run_query(sql, sources) as reader:
        write_result(reader, "parquet", path=str(tmp_path / "out.parquet"))
    assert pq.read_table(tmp_path / "out.parquet")["key"].to_pylist() == [r["key"] for r in lines]
    with run_query(sql, sources) as reader, pytest.raises(CurateError, match="needs -o"):
        write_result(reader, "parquet")


def test_bad_queries_and_sources_are_one_line_errors(folders, tmp_path):
    with pytest.raises(CurateError, match="^Parser Error: syntax error"):
        rows("SELEC 1", scores=folders["scores"])
    with pytest.raises(CurateError, match="nope"):
        rows("SELECT nope FROM scores", scores=folders["scores"])
    with pytest.raises(CurateError, match="manifest"):  # only the views whose folder is given exist
        rows("SELECT * FROM manifest", scores=folders["scores"])
    with pytest.raises(CurateError, match="does not exist"):
        rows("SELECT 1", scores=tmp_path / "nope")
    with pytest.raises(CurateError, match="no such folder"):
        rows("SELECT 1", shards=tmp_path / "nope")
    with pytest.raises(CurateError, match="at least one"):
        rows("SELECT 1")


def test_query_from_the_command_line(folders, tmp_path):
    sql = "SELECT chunk, count(*) AS n FROM manifest GROUP BY chunk ORDER BY chunk"
    table = run_cli("query", sql, "--manifest", str(folders["manifest"]))
    assert table.returncode == 0, table.stderr
    assert "chunk" in table.stdout and "2 rows" in table.stderr
    as_json = run_cli("query", sql, "--manifest", str(folders["manifest"]), "--format", "json")
    assert [json.loads(line)["chunk"] for line in as_json.stdout.splitlines()] == [0, 1]
    out = tmp_path / "chunks.parquet"
    assert run_cli(
        "query", sql, "--manifest", str(folders["manifest"]), "--format", "parquet", "-o", str(out)
    )
    assert pq.read_table(out).num_rows == 2
    bad = run_cli("query", "SELECT nope FROM manifest", "--manifest", str(folders["manifest"]))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "nope" in bad.stderr


def test_the_scores_view_holds_one_model_like_every_reader(tmp_path):
    rng = np.random.default_rng(1)
    for shard, model in (("00000.tar", "one"), ("00001.tar", "another")):
        image, text = unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(3, 4)))
        write_scores(
            tmp_path / "scores", shard, [f"{shard[:5]}{i}" for i in range(3)], image, text, model=model
        )
    with pytest.raises(CurateError, match="scored by another model"):
        rows("SELECT count(*) FROM scores", scores=tmp_path / "scores")


def test_sources_and_outputs_on_other_filesystems(folders, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)
    memory = fsspec.filesystem("memory")
    for table in sorted(folders["shards"].glob("*.parquet")):
        memory.pipe(f"/query-shards/{table.name}", table.read_bytes())
    sql = "SELECT count(*) AS n FROM shards"
    assert rows(sql, shards="memory://query-shards") == rows(sql, shards=folders["shards"]) == [{"n": 400}]
    assert rows("SELECT count(*) AS n FROM manifest", manifest=f"file://{folders['manifest']}")[0]["n"] > 0
    with pytest.raises(CurateError, match="^--scores memory://s: only local paths"):
        rows("SELECT 1", scores="memory://s")
    with pytest.raises(CurateError, match="^--manifest memory://m: only local paths"):
        rows("SELECT 1", manifest="memory://m")

    sources = QuerySources(shards="memory://query-shards")
    with run_query("SELECT key FROM shards ORDER BY key LIMIT 3", sources) as reader:
        assert write_result(reader, "csv", path="memory://answers/keys.csv") == 3
    assert memory.cat("/answers/keys.csv").decode().splitlines()[0] == "key"
    with (
        run_query(sql, sources) as reader,
        pytest.raises(CurateError, match="^-o missing/x.csv: cannot write"),
    ):
        write_result(reader, "csv", path="missing/x.csv")
    assert list(tmp_path.iterdir()) == []  # no ./memory:/ folder, nothing half-written


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory) -> list[Path]:
    """Two runs on small_synth: a real 3-step siglip-tiny run on the manifest's batches, and one whose
    batch log (every sample once, 50 a step) is written by the trainer's own writer."""
    root = tmp_path_factory.mktemp("runs")
    data = DataConfig((str(folders["shards"]),), str(folders["manifest"]), cache="memory", workers=0)
    optim = OptimConfig(lr=1e-3, warmup=1)
    train(TrainConfig(data, str(root / "jest"), model="siglip-tiny", batch_size=25, steps=3, optim=optim))
    (root / "uniform").mkdir()
    log = BatchLog()
    keys = sorted(
        pq.read_table(sorted(folders["shards"].glob("*.parquet")), columns=["key"])["key"].to_pylist()
    )
    for step in range(0, len(keys), 50):
        log.add(step // 50, keys[step : step + 50])
    log.write(root / "uniform")
    return [root / "jest", root / "uniform"]


def test_the_batches_view_says_what_each_run_trained_on(folders, runs):
    sql = "SELECT run, noise, count(*) AS n FROM batches JOIN shards USING (key) GROUP BY ALL "
    answer = rows(sql + "ORDER BY run, noise", shards=folders["shards"], runs=tuple(runs))
    noise = pq.read_table(sorted(folders["shards"].glob("*.parquet")), columns=["key", "noise"])
    expected = []
    for run in runs:
        batches = read_batches(run)
        assert batches.num_rows > 0
        joined = batches.join(noise, "key").group_by("noise").aggregate([("key", "count")])
        counts = dict(zip(joined["noise"].to_pylist(), joined["key_count"].to_pylist(), strict=True))
        expected += [{"run": run.name, "noise": k, "n": counts[k]} for k in sorted(counts)]
    assert answer == expected
    steps = rows(
        "SELECT run, max(step) AS last, count(*) AS n FROM batches GROUP BY 1 ORDER BY 1",
        runs=tuple(runs),
    )
    # 3 steps of the manifest's batches of 25, less the few of small_synth's 4 corrupt images among them
    assert [(r["run"], r["last"]) for r in steps] == [("jest", 2), ("uniform", 7)]
    assert 71 <= steps[0]["n"] <= 75 and steps[1]["n"] == 400
    # the share of each noise kind, as curate query's help shows it
    share = rows(
        "SELECT run, noise, count(*) AS n, round(n / sum(n) OVER (PARTITION BY run), 3) AS share "
        "FROM batches JOIN shards USING (key) GROUP BY run, noise ORDER BY run, n DESC",
        shards=folders["shards"],
        runs=tuple(runs),
    )
    assert sorted((r["run"], r["noise"], r["n"]) for r in share) == sorted(
        (r["run"], r["noise"], r["n"]) for r in expected
    )
    for run in ("jest", "uniform"):
        assert sum(r["share"] for r in share if r["run"] == run) == pytest.approx(1, abs=0.01)
    # the real run trained the manifest's first three batches, in order
    manifest = read_manifest(folders["manifest"]).to_pandas()
    trained = read_batches(runs[0]).to_pandas()
    for step in range(3):
        chosen = manifest.loc[manifest["batch"] == step, "key"].tolist()
        assert trained.loc[trained["step"] == step, "key"].tolist() == [
            k for k in chosen if k in set(trained["key"])
        ]


def test_a_run_without_batches_is_a_one_line_error(folders, runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="^--run .*empty: no batches.parquet in it") as caught:
        rows("SELECT 1", runs=(runs[0], tmp_path / "empty"))
    assert "\n" not in str(caught.value)
    (tmp_path / "broken").mkdir()
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "broken" / "batches.parquet")
    with pytest.raises(CurateError, match="not a batch log"):
        rows("SELECT 1", runs=(tmp_path / "broken",))
    (tmp_path / "uniform").mkdir()
    BatchLog().write(tmp_path / "uniform")
    with pytest.raises(CurateError, match="both named 'uniform'"):
        rows("SELECT 1", runs=(runs[1], tmp_path / "uniform"))
    sql = "SELECT run, count(*) AS n FROM batches GROUP BY 1 ORDER BY 1"
    result = run_cli("query", sql, "--run", str(runs[0]), "--run", str(runs[1]), "--format", "json")
    assert result.returncode == 0, result.stderr
    expected = [{"run": r.name, "n": read_batches(r).num_rows} for r in runs]
    assert [json.loads(line) for line in result.stdout.splitlines()] == expected
    bad = run_cli("query", "SELECT 1", "--run", str(tmp_path / "empty"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no batches.parquet" in bad.stderr
