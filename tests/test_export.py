"""`curate export`: end to end from real scores, training order, byte-identical members, open_clip's loader,
resume."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from builders import write_manifest_rows
from conftest import run_cli

from curate.errors import CurateError
from curate.export import ExportConfig, default_samples_per_shard, export, exported_names
from curate.query import QuerySources, run_query
from curate.report.load import read_shard_columns, shard_tables
from curate.score import ScoreConfig, score_shards
from curate.select import SelectConfig, read_manifest, select
from curate.shards import ReadStats, iter_members, iter_samples
from curate.synth import SynthConfig, synthesize

STEPS = 14  # 6 batches of 32 per pass over small_synth's 396 good samples: 3 passes, so keys repeat


@pytest.fixture(scope="module")
def selected(small_synth, tmp_path_factory) -> Path:
    """small_synth scored for real by a random tiny model, then selected (ratio 0.5) into 14 batches."""
    root = tmp_path_factory.mktemp("export")
    web = f"{small_synth}/web"
    score_shards(
        web, str(root / "scores"), ScoreConfig(model="siglip-tiny", allow_random_init=True, workers=0)
    )
    config = SelectConfig(ratio=0.5, super_batch=64, chunks=4, seed=1, shards=web, steps=STEPS)
    select(str(root / "scores"), str(root / "manifest"), config)
    return root / "manifest"


def source_members(web: str) -> dict[str, dict[str, bytes]]:
    members = {}
    for tar in sorted(Path(web).glob("*.tar")):
        for key, group in iter_members(str(tar), ReadStats()):
            members.setdefault(key, group)
    return members


def training_order(manifest: Path) -> list[tuple[str, str, int]]:
    """(exported name, manifest key, batch) of every manifest row, in the manifest's (training) order; the
    n-th repeat of a key is named {key}_{n} (small_synth's keys are digits, so no suffix is ever taken)."""
    table = read_manifest(manifest).to_pydict()
    seen: Counter = Counter()
    rows = []
    for key, batch in zip(table["key"], table["batch"], strict=True):
        rows.append((f"{key}_{seen[key]}" if seen[key] else key, key, batch))
        seen[key] += 1
    return rows


def test_export_writes_the_batches_in_training_order(selected, small_synth, tmp_path):
    out = tmp_path / "curated"
    summary = export(str(selected), str(out), ExportConfig())  # shards found from select --shards
    order = training_order(selected)
    batches = [batch for _, _, batch in order]
    assert batches == sorted(batches) and batches[-1] == STEPS - 1  # the manifest lists batch by batch
    repeats = sum(name != key for name, key, _ in order)
    assert repeats > 0  # the passes repeat keys, so this checks the names
    assert (summary.samples, summary.repeats, summary.missing) == (len(order), repeats, 0)
    assert summary.source_shards_read == 4  # each source read once
    assert summary.samples_per_shard == default_samples_per_shard(len(order))
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == summary.shards_written == 16  # enough for 16 loader workers

    # What a trainer reading the shards in order sees: JEST's samples, batch after batch.
    dataset = wds.WebDataset([str(t) for t in tars], shardshuffle=False)
    read = [(sample["__key__"], json.loads(sample["json"])["batch"]) for sample in dataset]
    assert read == [(name, batch) for name, _, batch in order]

    source = source_members(f"{small_synth}/web")
    per_shard = summary.samples_per_shard
    for i, tar in enumerate(tars):
        rows = order[i * per_shard : (i + 1) * per_shard]  # output shard i holds plan rows [iK, (i+1)K)
        written = list(iter_members(str(tar), ReadStats()))
        assert [name for name, _ in written] == [name for name, _, _ in rows]
        for (name, group), (_, key, batch) in zip(written, rows, strict=True):
            original = source[key]
            assert group.keys() == original.keys()
            # every member byte for byte, except the .json: the source's plus where it goes
            assert {e: d for e, d in group.items() if e != "json"} == {
                e: d for e, d in original.items() if e != "json"
            }
            renamed = {"key": name, "source_key": key} if name != key else {}
            assert json.loads(group["json"]) == {**json.loads(original["json"]), **renamed, "batch": batch}
        table = pq.read_table(tar.with_suffix(".parquet"))
        assert table["key"].to_pylist() == [name for name, _, _ in rows]  # one row per sample, in tar order
        assert table["source_key"].to_pylist() == [key for _, key, _ in rows]
        assert table["batch"].to_pylist() == [batch for _, _, batch in rows]
        assert table.schema.field("batch").type == pa.int64()
        assert "noise" in table.column_names  # the source parquet's extra columns come along
        stats = json.loads((out / f"{tar.stem}_stats.json").read_text())
        assert stats["successes"] == stats["count"] == len(rows)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {t.name: len(list(iter_members(str(t), ReadStats()))) for t in tars}

    # One batch per shard when K is the batch size: shard t is step t.
    by_batch = tmp_path / "by-batch"
    export(str(selected), str(by_batch), ExportConfig(samples_per_shard=32))
    for step, table_path in enumerate(sorted(by_batch.glob("*.parquet"))):
        assert set(pq.read_table(table_path, columns=["batch"])["batch"].to_pylist()) == {step}

    # The shard readers still read an export: the shards view of curate query, the report's shard
    # tables (one row per exported name) and iter_samples.
    with run_query(
        "SELECT count(*) AS n, count(DISTINCT source_key) AS k FROM shards", QuerySources(shards=str(out))
    ) as reader:
        assert reader.read_all().to_pylist() == [{"n": len(order), "k": len({k for _, k, _ in order})}]
    noise = read_shard_columns(shard_tables(str(out)), ["key", "noise"])
    assert sorted(noise.index) == sorted(name for name, _, _ in order)
    assert sum(1 for _ in iter_samples(str(out))) == len(order)


def test_repeated_keys_get_names_no_other_key_has():
    assert exported_names(["a", "b", "a", "a"]) == ["a", "b", "a_1", "a_2"]
    # "a_1" is a key of its own here, so the first repeat of "a" takes the next free suffix
    assert exported_names(["a", "a_1", "a", "a_1", "a_2"]) == ["a", "a_1", "a_3", "a_1_1", "a_2"]
    assert exported_names(["a", "a", "a_1"]) == ["a", "a_2", "a_1"]


def test_open_clip_training_pipeline_reads_every_sample(selected, tmp_path):
    data = pytest.importorskip("open_clip_train.data")
    out = tmp_path / "curated"
    summary = export(str(selected), str(out), ExportConfig(samples_per_shard=40))
    pattern = f"{out}/{{00000..{summary.shards - 1:05d}}}.tar"
    assert data.get_dataset_size(pattern) == (summary.samples, summary.shards)  # read from sizes.json
    args = types.SimpleNamespace(
        val_data=pattern, val_num_samples=None, batch_size=16, workers=0, world_size=1
    )
    preprocess = lambda image: torch.zeros(3, *image.size)  # noqa: E731 - the images are decoded by the pipeline
    tokenizer = lambda texts: torch.zeros(1, 8, dtype=torch.long)  # noqa: E731
    loader = data.get_wds_dataset(args, preprocess, is_train=False, tokenizer=tokenizer).dataloader
    assert sum(images.shape[0] for images, _ in loader) == summary.samples


def test_open_clip_trains_in_export_order_only_without_its_shuffles(selected, tmp_path, monkeypatch):
    """What docs/guides/open-clip.md says: open_clip's training pipeline shuffles shards and samples, and
    with its four buffer sizes set to 1 (K = its --batch-size) it gives back the export's batches in order."""
    data = pytest.importorskip("open_clip_train.data")
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0 fails on webdataset 0.2.111's end-of-shard marker (docs/development.md)
    monkeypatch.setattr(data, "tar_file_expander", lambda *a, **k: tar_file_expander(*a, **k, eof_value=None))
    out = tmp_path / "curated"
    summary = export(str(selected), str(out), ExportConfig(samples_per_shard=32))
    tars = [str(t) for t in sorted(out.glob("*.tar"))]
    captions = [sample["txt"].decode() for sample in wds.WebDataset(tars, shardshuffle=False)]
    ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
    args = types.SimpleNamespace(
        train_data=f"{out}/{{00000..{summary.shards - 1:05d}}}.tar",
        train_num_samples=None,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=32,
        world_size=1,
        workers=0,
    )

    def trained() -> list[int]:
        preprocess = lambda image: torch.zeros(1)  # noqa: E731
        tokenizer = lambda text: torch.tensor([[ids[text]]])  # noqa: E731 - each caption's id
        loader = data.get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader
        return [int(i) for _, texts in loader for i in texts[:, 0]]

    order = [ids[caption] for caption in captions]
    shuffled = trained()
    assert sorted(shuffled) == sorted(order) and shuffled != order  # the same samples, as a set
    for name in (
        "SHARD_SHUFFLE_SIZE",
        "SHARD_SHUFFLE_INITIAL",
        "SAMPLE_SHUFFLE_SIZE",
        "SAMPLE_SHUFFLE_INITIAL",
    ):
        monkeypatch.setattr(data, f"_{name}", 1)
    assert trained() == order


def test_export_resumes_and_refuses_to_mix_exports(selected, tmp_path):
    out = tmp_path / "curated"
    export(str(selected), str(out), ExportConfig(samples_per_shard=30))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in ("00002.tar", "00002.parquet", "00002_stats.json"):  # as if shard 2 were never written
        (out / name).unlink()
    again = export(str(selected), str(out), ExportConfig(samples_per_shard=30))
    assert again.shards_written == 1 and again.shards_skipped == again.shards - 1
    shard_two = read_manifest(selected)["shard"].to_pylist()[60:90]
    assert again.source_shards_read == len(set(shard_two))  # only the source shards that shard 2 needs
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # shard 2 rewritten byte for byte
    with pytest.raises(CurateError, match="another export"):
        export(str(selected), str(out), ExportConfig(samples_per_shard=31))


def write_manifest(folder: Path, rows: list[tuple[str, str]]) -> None:
    write_manifest_rows(folder, [k for _, k in rows], [s for s, _ in rows])


def test_missing_samples_and_shards_are_reported(small_synth, tmp_path):
    web = f"{small_synth}/web"
    first = [next(iter_members(f"{web}/{shard}", ReadStats()))[0] for shard in ("00000.tar", "00001.tar")]
    write_manifest(
        tmp_path / "m", [("00000.tar", first[0]), ("00000.tar", "000009999"), ("00001.tar", first[1])]
    )
    with pytest.raises(CurateError, match="pass --shards"):
        export(str(tmp_path / "m"), str(tmp_path / "a"), ExportConfig())
    with pytest.raises(
        CurateError, match="1 of the manifest's 3 keys are not in its shards .* --allow-missing"
    ):
        export(str(tmp_path / "m"), str(tmp_path / "b"), ExportConfig(shards=web))
    summary = export(str(tmp_path / "m"), str(tmp_path / "b"), ExportConfig(shards=web, allow_missing=True))
    assert (
        summary.samples == 2 and summary.missing == 1 and summary.missing_examples == ["00000.tar:000009999"]
    )
    assert (summary.keys_wanted, summary.keys_missing) == (3, 1)

    write_manifest(tmp_path / "gone", [("00007.tar", first[0])])
    with pytest.raises(CurateError, match="not in .*00007.tar"):
        export(str(tmp_path / "gone"), str(tmp_path / "c"), ExportConfig(shards=web))
    with pytest.raises(CurateError, match="no manifest"):
        export(str(tmp_path / "nothing"), str(tmp_path / "d"), ExportConfig(shards=web))


def test_a_manifest_whose_keys_are_not_in_the_shards_writes_nothing(selected, small_synth, tmp_path):
    """The probe's case: every key absent (another crawl, re-keyed) exported 16 empty shards with exit 0."""
    rows = read_manifest(selected).to_pydict()
    keys = rows["key"]
    write_manifest_rows(tmp_path / "m", [f"9{key}" for key in keys], rows["shard"], rows["batch"])
    result = run_cli(
        "export", str(tmp_path / "m"), "-o", str(tmp_path / "out"), "--shards", f"{small_synth}/web"
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"of the manifest's {len(set(keys))} keys are not in its shards" in result.stderr
    assert not list((tmp_path / "out").glob("*.tar"))


def test_another_crawl_with_the_same_names_is_refused_not_copied(selected, small_synth, tmp_path):
    """Shard and key names are positions, not identities: a crawl synthesised with another seed has the same
    ones. Export checks every image against the sha256 it was scored with."""
    other = tmp_path / "other"
    synthesize(SynthConfig(n=400, seed=8, samples_per_shard=100, eval_per_class=2), str(other), workers=1)
    config = ExportConfig(shards=str(other / "web"))
    with pytest.raises(CurateError, match="source shard 00000.tar: sample .* not the one that was scored"):
        export(str(selected), str(tmp_path / "out"), config)
    assert not list((tmp_path / "out").glob("*.tar"))
    summary = export(str(selected), str(tmp_path / "right"), ExportConfig(shards=f"{small_synth}/web"))
    assert summary.verified == summary.keys_wanted > 0  # the right crawl: every sample checked


def test_export_from_the_command_line(selected, tmp_path):
    out = tmp_path / "curated"
    result = run_cli("export", str(selected), "-o", str(out), "--samples-per-shard", "50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote ") and f"{out}/{{00000..0000" in result.stdout
    bad = run_cli("export", str(tmp_path / "nope"), "-o", str(out))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no manifest" in bad.stderr


def first_keys(web: str) -> list[tuple[str, str]]:
    """(shard, key) of the first two samples of small_synth's shards 00000 and 00001."""
    rows = []
    for shard in ("00000.tar", "00001.tar"):
        members = iter_members(f"{web}/{shard}", ReadStats())
        rows += [(shard, next(members)[0]), (shard, next(members)[0])]
    return rows


def test_the_same_samples_in_another_order_are_another_export(small_synth, tmp_path):
    web = f"{small_synth}/web"
    rows = first_keys(web)
    keys, shards = [k for _, k in rows], [s for s, _ in rows]
    write_manifest_rows(tmp_path / "m", keys, shards, batches=[0, 0, 1, 1])
    write_manifest_rows(tmp_path / "swapped", keys, shards, batches=[1, 1, 0, 0])
    out = tmp_path / "curated"
    export(str(tmp_path / "m"), str(out), ExportConfig(shards=web))
    with pytest.raises(CurateError, match="another export"):
        export(str(tmp_path / "swapped"), str(out), ExportConfig(shards=web))
    config = ExportConfig(shards=web, samples_per_shard=4)
    elsewhere = export(str(tmp_path / "swapped"), str(tmp_path / "b"), config)
    assert elsewhere.samples == 4
    assert pq.read_table(tmp_path / "b" / "00000.parquet")["key"].to_pylist() == keys[2:] + keys[:2]


def test_a_damaged_export_record_is_a_one_line_error(small_synth, tmp_path):
    web = f"{small_synth}/web"
    write_manifest(tmp_path / "m", first_keys(web))
    out = tmp_path / "curated"
    export(str(tmp_path / "m"), str(out), ExportConfig(shards=web))
    (out / "export.json").write_text('{"samples": 4, "plan_sha')  # torn by a full disk, say
    with pytest.raises(CurateError, match="cannot read .*export.json as a curate export record") as caught:
        export(str(tmp_path / "m"), str(out), ExportConfig(shards=web))
    assert "\n" not in str(caught.value)
    (out / "export.json").write_text("[1, 2]")
    with pytest.raises(CurateError, match="not a curate export record"):
        export(str(tmp_path / "m"), str(out), ExportConfig(shards=web))


def test_rows_rebuilt_from_json_members_are_counted_and_printed(small_synth, tmp_path):
    source = tmp_path / "web"
    source.mkdir()
    for name in ("00000.tar", "00000.parquet", "00001.tar"):  # 00001 has no parquet at all
        (source / name).write_bytes((Path(small_synth) / "web" / name).read_bytes())
    (source / "00000.parquet").write_bytes(b"PAR1 torn")
    write_manifest(tmp_path / "m", first_keys(str(source)))
    config = ExportConfig(shards=str(source), samples_per_shard=4)
    summary = export(str(tmp_path / "m"), str(tmp_path / "a"), config)
    assert summary.samples == 4
    assert [(shard, why.split(":")[0]) for shard, why in summary.rebuilt] == [
        ("00000.tar", "its .parquet cannot be read"),
        ("00001.tar", "no 00001.parquet beside it"),
    ]
    table = pq.read_table(tmp_path / "a" / "00000.parquet")
    assert table["key"].to_pylist() == [key for _, key in first_keys(str(source))]
    assert set(table["status"].to_pylist()) == {"success"} and all(table["caption"].to_pylist())

    result = run_cli("export", str(tmp_path / "m"), "-o", str(tmp_path / "b"), "--shards", str(source))
    assert result.returncode == 0, result.stderr
    assert "rows of 2 source shard(s) were rebuilt from their .json members" in result.stderr


def test_export_writes_to_fsspec_urls_and_reads_file_urls(small_synth, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)
    web = f"{small_synth}/web"
    write_manifest(tmp_path / "m", first_keys(web))
    local = export(str(tmp_path / "m"), str(tmp_path / "local"), ExportConfig(shards=web))
    remote = export(f"file://{tmp_path}/m", "memory://curated", ExportConfig(shards=f"file://{web}"))
    assert (remote.samples, remote.shards) == (local.samples, local.shards)
    fs = fsspec.filesystem("memory")
    for path in sorted((tmp_path / "local").iterdir()):
        if path.name != "export.json":  # it records the manifest's path, spelt as given
            assert fs.cat(f"/curated/{path.name}") == path.read_bytes(), path.name
    with pytest.raises(CurateError, match="^MANIFEST memory://m: only local paths"):
        export("memory://m", str(tmp_path / "x"), ExportConfig(shards=web))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "m"]  # no ./memory:/ or ./file:/ folder
