"""`curate download` against a real img2dataset run and a real HTTP server on 127.0.0.1."""

import io
import json
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import http_server, run_cli
from PIL import Image

from curate.download import DownloadConfig, download, merge_retried, read_url_table, retry_failed
from curate.download.retry import RETRY_KEY, RETRY_SHARD
from curate.errors import CurateError
from curate.shards import ReadStats, ShardRecord, iter_members, iter_samples, write_shard, write_shard_files


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (a free port) for the duration of one test."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(root) as base:
        yield root, base


def put_image(root, name: str, colour, mode="RGB", fmt="PNG") -> None:
    buffer = io.BytesIO()
    Image.new(mode, (40, 30), colour).save(buffer, format=fmt)
    (root / name).write_bytes(buffer.getvalue())


def url_table(tmp_path, base: str) -> str:
    rows = [
        {"link": f"{base}/red.png", "text": "a red image", "source": "a"},
        {"link": f"{base}/green.jpg", "text": "a green image", "source": "b"},
        {"link": f"{base}/gray.png", "text": "a grey image", "source": "c"},
        {"link": f"{base}/missing.png", "text": "comes later", "source": "d"},
        {"link": f"{base}/notes.txt", "text": "not an image", "source": "e"},
        {"link": "http://127.0.0.1:9/refused.png", "text": "nobody listens", "source": "f"},
    ]
    import fsspec

    path = f"memory://{tmp_path}/urls.parquet"  # the url table may live on any fsspec filesystem
    with fsspec.open(path, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows), handle)
    return path


def test_download_then_retry_failed_merges_recovered_rows(tmp_path, server, monkeypatch):
    root, base = server
    temporary = tmp_path / "tmp"  # what the download leaves in the temp folder: nothing, checked at the end
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    put_image(root, "red.png", (255, 0, 0))
    put_image(root, "green.jpg", (0, 255, 0), fmt="JPEG")
    put_image(root, "gray.png", 128, mode="L")
    (root / "notes.txt").write_text("plain text, not an image")
    out = tmp_path / "shards"
    config = DownloadConfig(
        url_col="link",
        caption_col="text",
        image_size=32,
        processes=1,
        threads=4,
        samples_per_shard=4,
        extra_columns=("source",),
        timeout=2,
    )
    summary = download(url_table(tmp_path, base), f"file://{out}", config)
    assert (summary.shards, summary.count, summary.successes) == (2, 6, 3)
    assert sum(summary.failures.values()) == 3 and len(summary.failures) == 3  # 404, not an image, refused

    stats = ReadStats()
    samples = list(iter_samples(str(out), stats))
    assert sorted(s.caption for s in samples) == ["a green image", "a grey image", "a red image"]
    assert {s.meta["source"] for s in samples} == {"a", "b", "c"}
    assert all(Image.open(io.BytesIO(s.image)).size == (32, 32) for s in samples)
    assert stats.samples == 3 and not stats.skipped
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 0}

    put_image(root, "missing.png", (0, 0, 255))
    summary = retry_failed(str(out), config)
    assert (summary.retried, summary.recovered, summary.successes) == (3, 1, 4)
    samples = list(iter_samples(str(out)))
    blue = next(s for s in samples if s.caption == "comes later")
    assert blue.key == "000003" and blue.meta["key"] == "000003" and blue.meta["source"] == "d"
    table = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["status"] for r in table] == ["success"] * 4
    assert not (out / "_retry").exists()
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4, "00001.tar": 0}

    again = retry_failed(f"file://{out}", config)  # nothing new to find, nothing duplicated
    assert (again.successes, again.recovered) == (4, 0)
    assert len(list(iter_samples(str(out)))) == 4
    assert list(temporary.iterdir()) == []  # not even wandb's folders from img2dataset's workers


def test_bad_url_tables_are_refused_in_one_line(tmp_path):
    with pytest.raises(CurateError, match="no such file"):
        download(str(tmp_path / "nope.parquet"), str(tmp_path / "out"), DownloadConfig())
    (tmp_path / "urls.csv").write_text("address,caption\nhttp://x/a.png,hello\n")
    with pytest.raises(CurateError, match="no column 'url'"):
        download(str(tmp_path / "urls.csv"), str(tmp_path / "out"), DownloadConfig())
    result = run_cli("download", str(tmp_path / "urls.csv"), str(tmp_path / "out"), "--url-col", "link")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no column 'link'" in result.stderr


def test_folders_that_are_not_local_are_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://x/a.png,hello\n")
    with pytest.raises(CurateError, match="^OUT memory://out: only local paths"):
        download(str(tmp_path / "urls.csv"), "memory://out", DownloadConfig())
    with pytest.raises(CurateError, match="^OUT memory://out: only local paths"):
        retry_failed("memory://out", DownloadConfig())
    with pytest.raises(CurateError, match="no such file: memory://nowhere/urls.csv"):
        download("memory://nowhere/urls.csv", str(tmp_path / "out"), DownloadConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["urls.csv"]  # no ./memory:/... folder


def test_url_tables_are_read_from_local_paths_file_urls_and_fsspec(tmp_path):
    import fsspec

    (tmp_path / "urls.tsv").write_text("link\ttext\textra\nhttp://x/a.png\t7\tq\n")
    with fsspec.open("memory://tables/urls.jsonl", "w") as handle:
        handle.write('{"link": "http://x/b.png", "text": "b", "extra": "r"}\n')
    config = DownloadConfig(url_col="link", caption_col="text", extra_columns=("extra",))
    for path in (str(tmp_path / "urls.tsv"), f"file://{tmp_path}/urls.tsv", "memory://tables/urls.jsonl"):
        table = read_url_table(path, config)
        assert table.column_names == ["url", "caption", "extra"] and table["caption"].type == pa.string()
    assert read_url_table(str(tmp_path / "urls.tsv"), config).to_pylist()[0]["caption"] == "7"


def shard_with_a_failure(folder) -> dict[str, bytes]:
    """Shard 00000 of `folder`: sample 0000000 downloaded, 0000001 failed; returns its files' bytes."""
    write_shard(
        str(folder),
        0,
        [
            ShardRecord(
                key="0000000", caption="red", image=png_bytes((255, 0, 0)), image_ext="png", url="u0"
            ),
            ShardRecord(
                key="0000001", caption="blue", url="u1", status="failed_to_download", error_message="404"
            ),
        ],
    )
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def retried_shard(folder, json_member: bytes) -> None:
    """What the retry run writes for 0000001 of shard 00000: a success under a key of its own."""
    table = pa.table(
        {
            "key": ["000000"],
            "caption": ["blue"],
            "url": ["u1"],
            "status": ["success"],
            "error_message": [None],
            RETRY_KEY: ["0000001"],
            RETRY_SHARD: ["00000"],
        }
    )
    members = [("png", png_bytes((0, 0, 255))), ("txt", b"blue"), ("json", json_member)]
    write_shard_files(str(folder), "00000", [("000000", members)], table)


def test_merging_a_retry_rewrites_the_shard_and_refuses_a_member_that_is_not_json(tmp_path):
    out, retried = tmp_path / "out", tmp_path / "retried"
    before = shard_with_a_failure(out)
    retried_shard(retried, b"{not json")
    with pytest.raises(CurateError, match="0000001: its .json is not JSON"):
        merge_retried(retried, out)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before  # untouched

    meta = {"key": "000000", "caption": "blue", RETRY_KEY: "0000001", RETRY_SHARD: "00000"}
    retried_shard(retried, json.dumps(meta).encode())
    assert merge_retried(retried, out) == 1
    members = dict(iter_members(str(out / "00000.tar"), ReadStats()))
    assert sorted(members) == ["0000000", "0000001"]
    assert json.loads(members["0000001"]["json"]) == {"key": "0000001", "caption": "blue"}
    assert [r["status"] for r in pq.read_table(out / "00000.parquet").to_pylist()] == ["success"] * 2
    stats = json.loads((out / "00000_stats.json").read_text())
    assert (stats["successes"], stats["failed_to_download"], stats["status_dict"]) == (2, 0, {"success": 2})
    assert merge_retried(retried, out) == 1  # a second merge (a killed retry, re-run) adds nothing
    assert len(list(iter_members(str(out / "00000.tar"), ReadStats()))) == 2


def test_retry_failed_refuses_folders_it_cannot_merge_into(tmp_path):
    no_status = tmp_path / "no_status"
    no_status.mkdir()
    pq.write_table(
        pa.table({"key": ["1"], "url": ["http://127.0.0.1:9/x"], "caption": ["c"]}),
        no_status / "00000.parquet",
    )
    with pytest.raises(
        CurateError, match="00000.parquet is not an img2dataset shard table: no status column"
    ):
        retry_failed(str(no_status), DownloadConfig())

    no_tar = tmp_path / "no_tar"
    shard_with_a_failure(no_tar)
    (no_tar / "00000.tar").unlink()
    with pytest.raises(CurateError, match="has failed rows but no 00000.tar beside it"):
        retry_failed(str(no_tar), DownloadConfig(timeout=1))
