import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import CurateError
from curate.shards import (
    ReadStats,
    ShardRecord,
    decode_rgb,
    expand_shards,
    folder_files,
    image_decodes,
    iter_members,
    iter_samples,
    sample_key,
    shard_done,
    shard_sibling,
    shard_stats,
    write_shard,
    write_shard_files,
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


def cut(path, end: int, to) -> None:
    to.write_bytes(path.read_bytes()[:end])


def test_a_tar_cut_at_a_member_boundary_or_inside_a_header_is_damaged(tmp_path):
    write_shard(str(tmp_path), 0, records(4))
    whole = tmp_path / "00000.tar"
    with tarfile.open(whole) as tar:
        members = tar.getmembers()
    # The end of the second sample's .json, padded to its block: a tar that stops here reads like a whole
    # two-sample one but for its missing end-of-archive block.
    json_member = members[5]
    boundary = json_member.offset_data + -(-json_member.size // 512) * 512
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    cut(whole, boundary, damaged / "00000.tar")
    cut(whole, boundary + 100, damaged / "00001.tar")  # inside the next header
    stats = ReadStats()
    samples = list(iter_samples(str(damaged), stats))
    assert [s.key for s in samples] == [sample_key(0, 0, 100)] * 2 and {s.shard for s in samples} == {
        "00000.tar",
        "00001.tar",
    }
    assert [name for name, _ in stats.bad_shards] == ["00000.tar", "00001.tar"]
    assert all("end-of-archive" in why for _, why in stats.bad_shards)
    assert stats.skipped["truncated_tar"] == 2  # the sample read last may have had more members

    stats = ReadStats()
    assert len(list(iter_samples(str(tmp_path), stats))) == 4 and not stats.bad_shards


def test_compressed_tars_are_read_by_their_name(tmp_path):
    import gzip

    write_shard(str(tmp_path), 0, records(3))
    (tmp_path / "00000.tar.gz").write_bytes(gzip.compress((tmp_path / "00000.tar").read_bytes()))
    stats = ReadStats()
    samples = list(iter_samples(str(tmp_path / "00000.tar.gz"), stats))
    assert [s.key for s in samples] == [r.key for r in records(3)] and not stats.bad_shards


def test_write_shard_files_computes_img2dataset_stats_from_the_table(tmp_path):
    table = pa.table(
        {
            "key": ["a1", "a2", "a3", "a4"],
            "status": ["success", "failed_to_download", "failed_to_resize", "success"],
            "error_message": [None, "404 Not Found", "image too small", None],
        }
    )
    samples = [("a1", [("png", png()), ("txt", b"one")]), ("a4", [("png", png()), ("", b"bare")])]
    earlier = {"count": 99, "start_time": 12.5, "duration": 3.0}
    stats = write_shard_files(str(tmp_path), "00007", samples, table, keep_stats=earlier)
    assert stats == {
        "count": 4,
        "start_time": 12.5,
        "duration": 3.0,
        "successes": 2,
        "failed_to_download": 1,
        "failed_to_resize": 1,
        "status_dict": {"404 Not Found": 1, "image too small": 1, "success": 2},
    }
    assert json.loads((tmp_path / "00007_stats.json").read_text()) == stats
    assert pq.read_table(tmp_path / "00007.parquet").equals(table)
    with tarfile.open(tmp_path / "00007.tar") as tar:
        assert tar.getnames() == ["a1.png", "a1.txt", "a4.png", "a4"]
        assert {m.mtime for m in tar.getmembers()} == {0}
    members = dict(iter_members(str(tmp_path / "00007.tar"), ReadStats()))
    assert members["a4"] == {"png": png(), "": b"bare"}
    assert shard_stats(table.drop_columns(["status", "error_message"]))["successes"] == 4


def test_a_success_without_an_image_is_refused(tmp_path):
    bad = records(2)
    bad[1].image = None
    with pytest.raises(CurateError, match="no image"):
        write_shard(str(tmp_path), 0, bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "I;16"])
def test_decode_rgb_converts_every_mode_to_rgb(mode):
    buffer = io.BytesIO()
    Image.new(mode, (9, 7)).save(buffer, format="PNG")
    image = decode_rgb(buffer.getvalue())
    assert (image.mode, image.size) == ("RGB", (9, 7))
    assert image_decodes(buffer.getvalue()) and not image_decodes(buffer.getvalue()[:40])


def test_folder_files_lists_one_kind_of_file_locally_and_on_fsspec(tmp_path):
    write_shard(str(tmp_path), 0, records(1))
    write_shard(str(tmp_path), 1, records(1, shard=1))
    (tmp_path / ".00002.parquet.abcd1234.tmp").write_bytes(b"")  # a writer's temporary file
    assert folder_files(str(tmp_path), ".parquet") == [
        f"{tmp_path}/00000.parquet",
        f"{tmp_path}/00001.parquet",
    ]
    assert folder_files(f"file://{tmp_path}", "_stats.json")[0] == f"{tmp_path}/00000_stats.json"
    assert shard_sibling("memory://s/00003.tar", "_stats.json") == "memory://s/00003_stats.json"
    write_shard("memory://listing", 0, records(1))
    (listed,) = folder_files("memory://listing", ".tar")
    assert listed.startswith("memory://") and listed.endswith("/listing/00000.tar")  # a URL stays a URL
    assert len(list(iter_samples(listed))) == 1
