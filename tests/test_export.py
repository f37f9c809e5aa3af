"""`curate export`: end to end from real scores, byte-identical members, open_clip's loader, resume."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from builders import write_manifest_rows
from conftest import run_cli

from curate.errors import CurateError
from curate.export import ExportConfig, default_samples_per_shard, export
from curate.score import ScoreConfig, score_shards
from curate.select import SelectConfig, read_manifest, select
from curate.shards import ReadStats, iter_members


@pytest.fixture(scope="module")
def selected(small_synth, tmp_path_factory) -> Path:
    """small_synth scored for real by a random tiny model, then selected (ratio 0.5) into a manifest."""
    root = tmp_path_factory.mktemp("export")
    web = f"{small_synth}/web"
    score_shards(
        web, str(root / "scores"), ScoreConfig(model="siglip-tiny", allow_random_init=True, workers=0)
    )
    config = SelectConfig(ratio=0.5, super_batch=64, chunks=4, seed=1, shards=web)
    select(str(root / "scores"), str(root / "manifest"), config)
    return root / "manifest"


def source_members(web: str) -> dict[str, dict[str, bytes]]:
    members = {}
    for tar in sorted(Path(web).glob("*.tar")):
        for key, group in iter_members(str(tar), ReadStats()):
            members.setdefault(key, group)
    return members


def test_export_copies_every_chosen_sample_once_with_identical_bytes(selected, small_synth, tmp_path):
    out = tmp_path / "curated"
    summary = export(str(selected), str(out), ExportConfig())  # shards found from select --shards
    manifest = read_manifest(selected)
    chosen = manifest["key"].to_pylist()
    assert summary.samples == len(chosen) and summary.missing == 0 and summary.source_shards_read == 4
    assert summary.samples_per_shard == default_samples_per_shard(len(chosen))
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == summary.shards_written == 16  # enough for 16 loader workers

    source = source_members(f"{small_synth}/web")
    written: list[str] = []
    for tar in tars:
        tar_keys = []
        for key, group in iter_members(str(tar), ReadStats()):
            assert group == source[key]  # every member (image, txt, json), byte for byte
            tar_keys.append(key)
        table = pq.read_table(tar.with_suffix(".parquet"))
        assert table["key"].to_pylist() == tar_keys  # one parquet row per sample, in tar order
        assert "noise" in table.column_names  # the source parquet's extra columns come along
        stats = json.loads((out / f"{tar.stem}_stats.json").read_text())
        assert stats["successes"] == stats["count"] == len(tar_keys)
        written += tar_keys
    assert sorted(written) == sorted(chosen) and len(written) == len(set(written))
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {t.name: len(list(iter_members(str(t), ReadStats()))) for t in tars}

    # The webdataset library, as a trainer would use it.
    pattern = f"{out}/{{00000..{len(tars) - 1:05d}}}.tar"
    dataset = (
        wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple("jpg;png;webp", "txt", "__key__")
    )
    read = [(image.size, text, key) for image, text, key in dataset]
    assert sorted(key for _, _, key in read) == sorted(chosen)
    assert all(text for _, text, _ in read)


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


def test_export_resumes_and_refuses_to_mix_exports(selected, tmp_path):
    out = tmp_path / "curated"
    export(str(selected), str(out), ExportConfig(samples_per_shard=30))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "00002_stats.json").unlink()  # as if killed while writing shard 2
    (out / "00002.tar").unlink()
    again = export(str(selected), str(out), ExportConfig(samples_per_shard=30))
    assert again.shards_written == 1 and again.shards_skipped == again.shards - 1
    assert again.source_shards_read == 1  # only the source shards that shard 2 needs
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
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
    summary = export(str(tmp_path / "m"), str(tmp_path / "b"), ExportConfig(shards=web))
    assert (
        summary.samples == 2 and summary.missing == 1 and summary.missing_examples == ["00000.tar:000009999"]
    )

    write_manifest(tmp_path / "gone", [("00007.tar", first[0])])
    with pytest.raises(CurateError, match="not in .*00007.tar"):
        export(str(tmp_path / "gone"), str(tmp_path / "c"), ExportConfig(shards=web))
    with pytest.raises(CurateError, match="no manifest"):
        export(str(tmp_path / "nothing"), str(tmp_path / "d"), ExportConfig(shards=web))


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


def test_a_damaged_export_record_is_a_one_line_error(small_synth, tmp_path):
    web = f"{small_synth}/web"
    write_manifest(tmp_path / "m", first_keys(web))
    out = tmp_path / "curated"
    export(str(tmp_path / "m"), str(out), ExportConfig(shards=web))
    (out / "export.json").write_text('{"samples": 4, "plan_sha')  # torn by a full disk, say
    with pytest.raises(CurateError, match="export.json is damaged") as caught:
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
