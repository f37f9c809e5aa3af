"""`curate export`: end to end from real scores, byte-identical members, open_clip's loader, resume."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from conftest import run_cli

from curate.errors import CurateError
from curate.export import ExportConfig, default_samples_per_shard, export
from curate.score import ScoreConfig, score_shards
from curate.select import MANIFEST_SCHEMA, SelectConfig, read_manifest, select
from curate.select.manifest import manifest_writer
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
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [k for _, k in rows],
            "shard": [s for s, _ in rows],
            "super_batch": pa.array([0] * len(rows), pa.int64()),
            "chunk": pa.array([0] * len(rows), pa.int32()),
            "score": pa.array([0.0] * len(rows), pa.float32()),
        },
        schema=MANIFEST_SCHEMA,
    )
    with open(folder / "manifest.parquet", "wb") as handle, manifest_writer(handle, {}) as writer:
        writer.write_table(table)


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
