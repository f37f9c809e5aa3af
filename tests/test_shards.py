import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import CurateError
from curate.shards import (
    ReadStats,
    ShardRecord,
    expand_shards,
    iter_samples,
    sample_key,
    shard_done,
    write_shard,
    write_sizes,
)


def png(colour=(255, 0, 0), size=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def records(n: int, shard: int = 0) -> list[ShardRecord]:
    return [
        ShardRecord(
            key=sample_key(shard, i, 100),
            caption=f"caption {i}",
            image=png((i * 20 % 256, 0, 0)),
            image_ext="png",
            url=f"http://x/{i}.png",
            width=8,
            height=8,
        )
        for i in range(n)
    ]


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_sample_keys_follow_img2dataset():
    assert sample_key(0, 5, 10000) == "000000005"
    assert sample_key(1, 5, 10000) == "000010005"
    assert sample_key(12, 99, 100) == "0001299"


def test_round_trip_keeps_every_byte_and_the_exact_layout(tmp_path):
    written = records(5)
    failed = ShardRecord(
        key=sample_key(0, 5, 100),
        caption="gone",
        url="http://x/5",
        status="failed_to_download",
        error_message="404 Not Found",
    )
    stats = write_shard(str(tmp_path), 0, [*written, failed])
    sizes = write_sizes(str(tmp_path))

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "sizes.json",
    ]
    assert stats["count"] == 6 and stats["successes"] == 5 and stats["failed_to_download"] == 1
    assert stats["status_dict"] == {"404 Not Found": 1, "success": 5}
    assert sizes == {"00000.tar": 5}
    assert json.loads((tmp_path / "00000_stats.json").read_text()) == stats

    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.column_names == ["key", "caption", "url", "status", "error_message", "width", "height"]
    assert table.column("status").to_pylist() == ["success"] * 5 + ["failed_to_download"]

    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["0000000.png", "0000000.txt", "0000000.json"]
    assert len(names) == 15  # the failure is in the parquet only, as img2dataset does

    stats = ReadStats()
    read = list(iter_samples(str(tmp_path), stats))
    assert [s.key for s in read] == [r.key for r in written]
    assert [s.image for s in read] == [r.image for r in written]
    assert [s.caption for s in read] == [r.caption for r in written]
    assert read[0].meta["url"] == "http://x/0.png" and read[0].shard == "00000.tar"
    assert stats.samples == 5 and not stats.skipped and not stats.bad_shards
    assert shard_done(str(tmp_path), 0) and not shard_done(str(tmp_path), 1)


def test_writer_refuses_dotted_keys_and_leaves_nothing_behind(tmp_path):
    bad = records(3)
    bad[2].key = "0000.5"
    with pytest.raises(CurateError, match="no '.'"):
        write_shard(str(tmp_path), 0, bad)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writer_leaves_no_half_shard_and_keeps_finished_ones(tmp_path):
    write_shard(str(tmp_path), 0, records(3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def dies_midway():
        yield from records(2, shard=1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shard(str(tmp_path), 1, dies_midway())
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not shard_done(str(tmp_path), 1)


def test_reader_skips_bad_members_and_counts_each_reason(tmp_path):
    good = png()
    write_tar(
        tmp_path / "00000.tar",
        [
            ("a1.png", good),
            ("a1.txt", b"a red square"),
            ("a1.json", b'{"noise": "none"}'),
            ("a2.png", good),  # no caption
            ("a3.txt", b"no image here"),
            ("a4.png", b"\x89PNG not really"),
            ("a4.txt", b"broken image"),
            ("a5.png", good),
            ("a5.txt", b"   "),
            ("a6.0.png", good),
            ("a6.0.txt", b"dotted key"),
            ("a7.jpg", good),
            ("a7.txt", b"bad json"),
            ("a7.json", b"{nope"),
            ("a8.webp", good),
            ("a8.txt", b"fine too"),
        ],
    )
    stats = ReadStats()
    samples = list(iter_samples(str(tmp_path), stats))
    assert [s.key for s in samples] == ["a1", "a8"]
    assert samples[0].meta == {"noise": "none"} and samples[1].image_ext == "webp"
    assert dict(stats.skipped) == {
        "missing_caption": 1,
        "missing_image": 1,
        "undecodable_image": 1,
        "empty_caption": 1,
        "dotted_key": 1,
        "invalid_json": 1,
    }
    unchecked = list(iter_samples(str(tmp_path), ReadStats(), check_images=False))
    assert [s.key for s in unchecked] == ["a1", "a4", "a8"]


def test_truncated_and_non_tar_shards_are_reported_not_raised(tmp_path):
    write_shard(str(tmp_path), 0, records(20))
    whole = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar archive at all" * 40)
    (tmp_path / "00003.tar").write_bytes(b"")

    stats = ReadStats()
    samples = list(iter_samples(str(tmp_path), stats))
    shards = {s.shard for s in samples}
    assert shards == {"00000.tar", "00001.tar"}
    from_truncated = sum(s.shard == "00001.tar" for s in samples)
    assert 0 < from_truncated < 20
    assert [name for name, _ in stats.bad_shards] == ["00001.tar", "00002.tar", "00003.tar"]
    assert stats.skipped["truncated_tar"] == 1
    assert "damaged shard" in stats.summary()


def test_expand_shards_takes_folders_lists_braces_globs_and_fsspec_urls(tmp_path):
    for i in range(3):
        write_shard(str(tmp_path), i, records(2, shard=i))
    names = [f"{tmp_path}/{i:05d}.tar" for i in range(3)]
    assert expand_shards(str(tmp_path)) == names
    assert expand_shards(f"{tmp_path}/{{00000..00001}}.tar") == names[:2]
    assert expand_shards([names[2], names[0]]) == [names[2], names[0]]
    assert expand_shards(f"{tmp_path}/*.tar") == names
    assert expand_shards(f"file://{tmp_path}/00001.tar") == [names[1]]
    with pytest.raises(CurateError, match="no such file or folder"):
        expand_shards(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no .tar shards"):
        expand_shards(str(tmp_path / "empty"))


def test_reads_from_an_fsspec_memory_filesystem():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.makedirs("/shards", exist_ok=True)
    write_shard("memory://shards", 0, records(4))
    assert fs.exists("/shards/00000_stats.json")
    samples = list(iter_samples("memory://shards"))
    assert [s.key for s in samples] == [sample_key(0, i, 100) for i in range(4)]
