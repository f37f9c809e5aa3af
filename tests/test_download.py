"""`curate download` against a real img2dataset run and a real HTTP server on 127.0.0.1."""

import functools
import http.server
import io
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from PIL import Image

from curate.download import DownloadConfig, download, retry_failed
from curate.errors import CurateError
from curate.shards import ReadStats, iter_samples


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (a free port) for the duration of one test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_download_then_retry_failed_merges_recovered_rows(tmp_path, server):
    root, base = server
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
    summary = download(url_table(tmp_path, base), str(out), config)
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

    again = retry_failed(str(out), config)  # nothing new to find, nothing duplicated
    assert (again.successes, again.recovered) == (4, 0)
    assert len(list(iter_samples(str(out)))) == 4


def test_bad_url_tables_are_refused_in_one_line(tmp_path):
    with pytest.raises(CurateError, match="no such file"):
        download(str(tmp_path / "nope.parquet"), str(tmp_path / "out"), DownloadConfig())
    (tmp_path / "urls.csv").write_text("address,caption\nhttp://x/a.png,hello\n")
    with pytest.raises(CurateError, match="no column 'url'"):
        download(str(tmp_path / "urls.csv"), str(tmp_path / "out"), DownloadConfig())
    result = run_cli("download", str(tmp_path / "urls.csv"), str(tmp_path / "out"), "--url-col", "link")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no column 'link'" in result.stderr
