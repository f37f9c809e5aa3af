"""`curate import`: pools in DataComp's and clip-retrieval's layouts, built here as they write them, into
score folders; select on them; the selection back out as DataComp's subset file and a url list."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import unit, write_manifest_rows, write_scores
from conftest import run_cli
from PIL import Image

from curate.imports import CALIBRATION_METADATA_KEY, ImportConfig, import_pool
from curate.imports.calibrate import calibrate, pair_loss, pair_similarities
from curate.jest.losses import PairEmbeddings, diagonal_losses, pair_losses
from curate.score.schema import NONFINITE, OK, comparable, open_score_folder, read_scoring_cost
from curate.select.manifest import read_manifest
from curate.shards import ShardRecord, write_shard

ROWS_PER_FILE = 200
FILES = 3


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    # the progress line a finished pass leaves (stderr is no terminal here) is not part of the error
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("import ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ the pools


def planted(n: int, dim: int, seed: int, misaligned: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows: image and caption of sample i near one of 8 concepts, the caption of a `misaligned` share
    from another concept (so a matched pair's cosine is high, most unmatched ones' low)."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((8, dim)).astype(np.float32)
    concept = rng.integers(0, 8, n)
    other = np.where(rng.random(n) < misaligned, (concept + rng.integers(1, 8, n)) % 8, concept)
    noise = 0.9
    image = unit(centroids[concept] + noise * rng.standard_normal((n, dim)).astype(np.float32))
    text = unit(centroids[other] + noise * rng.standard_normal((n, dim)).astype(np.float32))
    return image, text


def write_datacomp_pool(
    folder: Path, files: int = FILES, rows: int = ROWS_PER_FILE, seed: int = 0
) -> list[str]:
    """A pool as DataComp ships it: `{hash}.parquet` (uid as 32 hex digits, url, text, sizes, both CLIP
    scores, ...) beside `{hash}.npz` (l14_img, l14_txt, b32_img, b32_txt in fp16, the Parquet's row order).
    Returns every uid, in pool order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uids = []
    for number in range(files):
        name = f"{rng.integers(0, 2**63):016x}{number:016x}"  # DataComp names its files by a hash
        file_uids = [f"{rng.integers(0, 2**63):016x}{rng.integers(0, 2**63):016x}" for _ in range(rows)]
        l14 = planted(rows, 768, seed * 100 + number)
        b32 = planted(rows, 512, seed * 100 + number + 50)
        table = pa.table(
            {
                "uid": file_uids,
                "url": [f"https://example.com/{uid}.jpg" for uid in file_uids],
                "text": [f"a caption of {uid[:8]}" for uid in file_uids],
                "original_width": rng.integers(64, 1024, rows),
                "original_height": rng.integers(64, 1024, rows),
                "clip_b32_similarity_score": (b32[0] * b32[1]).sum(1).astype(np.float32),
                "clip_l14_similarity_score": (l14[0] * l14[1]).sum(1).astype(np.float32),
                "sha256": [f"{i:064x}" for i in range(rows)],
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")
        np.savez(
            folder / f"{name}.npz",
            l14_img=l14[0].astype(np.float16),
            l14_txt=l14[1].astype(np.float16),
            b32_img=b32[0].astype(np.float16),
            b32_txt=b32[1].astype(np.float16),
        )
        uids += file_uids
    return uids


def write_clip_retrieval(folder: Path, files: int = 2, rows: int = ROWS_PER_FILE, dim: int = 64) -> None:
    """clip-retrieval's inference output: img_emb/img_emb_N.npy, text_emb/text_emb_N.npy and
    metadata/metadata_N.parquet (image_path, caption, then the samples' img2dataset metadata)."""
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for number in range(files):
        image, text = planted(rows, dim, number)
        keys = [f"{number:05d}{row:04d}" for row in range(rows)]
        np.save(folder / "img_emb" / f"img_emb_{number}.npy", image.astype(np.float16))
        np.save(folder / "text_emb" / f"text_emb_{number}.npy", text.astype(np.float16))
        table = pa.table(
            {
                "image_path": [f"{key}.jpg" for key in keys],
                "caption": [f"caption {key}" for key in keys],
                "url": [f"https://laion.example/{key}.jpg" for key in keys],
                "key": keys,
                "status": ["success"] * rows,
                "similarity": np.linspace(0.2, 0.4, rows),
                "width": np.full(rows, 256),
            }
        )
        pq.write_table(table, folder / "metadata" / f"metadata_{number}.parquet")


def datacomp_file(pool: Path, number: int = 0) -> tuple[Path, Path]:
    parquet = sorted(pool.glob("*.parquet"))[number]
    return parquet, parquet.with_suffix(".npz")


def rewrite_npz(npz: Path, **changes: np.ndarray) -> None:
    with np.load(npz) as arrays:
        held = {name: arrays[name] for name in arrays.files}
    held.update(changes)
    np.savez(npz, **held)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("datacomp") / "metadata"
    return folder, write_datacomp_pool(folder)


@pytest.fixture(scope="module")
def imported(pool, tmp_path_factory) -> Path:
    scores = tmp_path_factory.mktemp("scores") / "scores"
    result = run_cli("import", "datacomp", str(pool[0]), "-o", str(scores))
    assert result.returncode == 0, result.stderr
    assert f"imported {FILES} files: {FILES * ROWS_PER_FILE} ok, 0 failed" in result.stdout
    return scores


# ------------------------------------------------------------------------------------- import → select


def test_a_datacomp_pool_imports_as_a_score_folder_of_zero_flops(pool, imported):
    folder = open_score_folder(imported)
    assert len(folder.files) == FILES
    meta = folder.metadata
    assert meta.model == "OpenAI CLIP ViT-L/14 as shipped by DataComp" and meta.embed_dim == 768
    assert meta.logit_scale > 1 and meta.logit_bias < 0  # fitted: a scale, and negatives' prior below 0
    cost = read_scoring_cost(imported)
    assert cost.flops == 0.0 and cost.uncounted == 0 and "l14_img" in cost.imported
    raw = pq.read_schema(folder.files[0]).metadata
    calibration = json.loads(raw[CALIBRATION_METADATA_KEY.encode()])
    assert calibration["seed"] == 0 and calibration["logit_scale"] == meta.logit_scale
    table = pq.read_table(folder.files[0])
    # every metadata column rides along; DataComp's sha256 (of the original image) is not the shard's
    assert {"uid", "url", "original_width", "clip_l14_similarity_score", "pool_sha256"} <= set(
        table.column_names
    )
    assert table["sha256"].null_count == table.num_rows and set(table["shard"].to_pylist()) == {""}
    assert table["key"].to_pylist() == table["uid"].to_pylist()
    assert table["caption"].to_pylist()[0].startswith("a caption of")
    # similarity is DataComp's own CLIP score, which the embeddings' cosine follows
    assert table["similarity"].to_pylist() == pytest.approx(table["clip_l14_similarity_score"].to_pylist())
    image = np.stack(table["image_emb"].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert np.linalg.norm(image, axis=1) == pytest.approx(1.0, abs=2e-3)


def test_clipscore_keeps_exactly_datacomps_top_30_percent_by_l14_score(pool, imported, tmp_path):
    """DataComp's "CLIP score (L/14 30%)" baseline is select --method clipscore --ratio 0.7."""
    result = run_cli(
        "select", str(imported), "-o", str(tmp_path / "m"), "--method", "clipscore", "--ratio", "0.7"
    )
    assert result.returncode == 0, result.stderr
    chosen = set(read_manifest(tmp_path / "m", ["key"])["key"].to_pylist())
    metadata = pa.concat_tables(
        pq.read_table(p, columns=["uid", "clip_l14_similarity_score"])
        for p in sorted(pool[0].glob("*.parquet"))
    )
    scores = metadata["clip_l14_similarity_score"].to_numpy()
    top = np.argsort(-scores, kind="stable")[: round(0.3 * len(scores))]
    assert chosen == {metadata["uid"][int(i)].as_py() for i in top}


def test_jest_selection_becomes_a_subset_file_datacomps_resharder_reads(pool, imported, tmp_path):
    manifest = tmp_path / "m"
    result = run_cli(
        "select",
        str(imported),
        "-o",
        str(manifest),
        "--ratio",
        "0.5",
        "--super-batch",
        "200",
        "--where",
        "original_width >= 200 AND clip_l14_similarity_score > 0.0",
    )
    assert result.returncode == 0, result.stderr
    chosen = read_manifest(manifest, ["key"])["key"].to_pylist()
    widths = {
        uid: width
        for p in sorted(pool[0].glob("*.parquet"))
        for uid, width in zip(
            *pq.read_table(p, columns=["uid", "original_width"]).to_pydict().values(), strict=True
        )
    }
    assert chosen and all(widths[uid] >= 200 for uid in chosen)  # --where sees the pool's columns

    subset, urls = tmp_path / "subset.npy", tmp_path / "urls.parquet"
    result = run_cli("export", str(manifest), "--datacomp-subset", str(subset), "--url-list", str(urls))
    assert result.returncode == 0, result.stderr
    assert f"wrote {len(set(chosen))} uids" in result.stdout

    # As DataComp's resharder reads it: np.load (memory-mapped), dtype u8,u8, searched by np.searchsorted
    # for each sample's uid split into its two 64-bit halves.
    records = np.load(subset, mmap_mode="r")
    assert records.dtype == np.dtype("u8,u8")
    assert np.array_equal(records, np.unique(records))  # sorted, no repeats
    for uid in pool[1]:
        key = np.array([divmod(int(uid, 16), 2**64)], np.dtype("u8,u8"))[0]
        count = np.searchsorted(records, key, "right") - np.searchsorted(records, key, "left")
        assert count == (1 if uid in set(chosen) else 0)

    listed = pq.read_table(urls)
    assert listed.column_names == ["url", "caption", "uid"]
    assert sorted(listed["uid"].to_pylist()) == sorted(set(chosen))
    assert all(url.endswith(".jpg") for url in listed["url"].to_pylist())


def test_partitions_select_an_imported_folder(imported, tmp_path):
    result = run_cli(
        "select",
        str(imported),
        "-o",
        str(tmp_path / "m"),
        "--ratio",
        "0.5",
        "--super-batch",
        "100",
        "--partitions",
        "2",
    )
    assert result.returncode == 0, result.stderr
    table = read_manifest(tmp_path / "m", ["key"])
    assert (
        table.num_rows == FILES * ROWS_PER_FILE // 2 and len(set(table["key"].to_pylist())) == table.num_rows
    )


def test_export_lists_need_an_imported_folder_and_one_output(tmp_path):
    rng = np.random.default_rng(0)
    scores = tmp_path / "scores"
    write_scores(
        scores, "00000.tar", ["a", "b"], unit(rng.standard_normal((2, 8))), unit(rng.standard_normal((2, 8)))
    )
    manifest = write_manifest_rows(tmp_path / "m", ["a"])
    assert_one_line_error(run_cli("export", str(manifest)), "-o OUT", "--datacomp-subset")
    assert_one_line_error(
        run_cli("export", str(manifest), "--datacomp-subset", str(tmp_path / "s.npy")), "does not record"
    )


# ---------------------------------------------------------------------------------- what import refuses


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("rows", "holds 199 rows but the metadata 200"),
        ("dim", "expected 768"),
        ("order", "does not follow the cosine"),
        ("duplicate", "names more than one row"),
        ("uid", "is not a DataComp uid"),
        ("npz", "has no x.npz beside it"),
    ],
)
def test_misaligned_or_malformed_pools_are_refused_in_one_line(tmp_path, damage, fragment):
    pool = tmp_path / "pool"
    write_datacomp_pool(pool, files=2)
    parquet, npz = datacomp_file(pool)
    with np.load(npz) as arrays:
        image, text = arrays["l14_img"], arrays["l14_txt"]
    if damage == "rows":
        rewrite_npz(npz, l14_img=image[1:], l14_txt=text[1:])
    elif damage == "dim":
        rewrite_npz(npz, l14_img=image[:, :512], l14_txt=text[:, :512])
    elif damage == "order":  # the arrays shuffled against the metadata: the counts still agree
        order = np.random.default_rng(0).permutation(len(image))
        rewrite_npz(npz, l14_img=image[order], l14_txt=text[order])
    elif damage in ("duplicate", "uid"):
        table = pq.read_table(parquet)
        uids = table["uid"].to_pylist()
        uids[5] = uids[3] if damage == "duplicate" else "not-a-uid"
        pq.write_table(table.set_column(0, "uid", pa.array(uids)), parquet)
    elif damage == "npz":
        parquet.rename(tmp_path / "pool" / "x.parquet")
    assert_one_line_error(run_cli("import", "datacomp", str(pool), "-o", str(tmp_path / "s")), fragment)


def test_a_key_repeated_across_files_is_refused(tmp_path):
    pool = tmp_path / "pool"
    write_datacomp_pool(pool, files=2)
    first, second = (pq.read_table(datacomp_file(pool, i)[0]) for i in (0, 1))
    uids = second["uid"].to_pylist()
    uids[7] = first["uid"][0].as_py()
    pq.write_table(second.set_column(0, "uid", pa.array(uids)), datacomp_file(pool, 1)[0])
    result = run_cli("import", "datacomp", str(pool), "-o", str(tmp_path / "s"))
    assert_one_line_error(result, first["uid"][0].as_py(), "must be unique")


def test_nonfinite_rows_are_counted_and_never_selected(tmp_path):
    pool = tmp_path / "pool"
    uids = write_datacomp_pool(pool, files=1)
    _, npz = datacomp_file(pool)
    with np.load(npz) as arrays:
        image, text = arrays["l14_img"].copy(), arrays["l14_txt"].copy()
    image[3, 5] = np.nan
    text[8] = 0  # no direction
    image[9, 0] = np.inf
    rewrite_npz(npz, l14_img=image, l14_txt=text)
    result = run_cli("import", "datacomp", str(pool), "-o", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert f"{ROWS_PER_FILE - 3} ok, 3 failed ({NONFINITE} 3)" in result.stdout
    table = pq.read_table(next((tmp_path / "s").glob("*.parquet")), columns=["key", "status"])
    assert [table["key"][i].as_py() for i, s in enumerate(table["status"].to_pylist()) if s != OK] == [
        uids[3],
        uids[8],
        uids[9],
    ]
    run_cli(
        "select", str(tmp_path / "s"), "-o", str(tmp_path / "m"), "--ratio", "0.0", "--super-batch", "500"
    )
    assert not {uids[3], uids[8], uids[9]} & set(read_manifest(tmp_path / "m", ["key"])["key"].to_pylist())


def test_an_interrupted_import_resumes_to_the_same_files(tmp_path, pool, imported):
    scores = tmp_path / "s"
    config = ImportConfig(source="datacomp")
    import_pool(str(pool[0]), str(scores), config)
    victim = sorted(scores.glob("*.parquet"))[1]
    victim.unlink()
    summary = import_pool(str(pool[0]), str(scores), config)
    assert (summary.files_done, summary.files_skipped, summary.calibration_reused) == (1, FILES - 1, True)
    for mine, theirs in zip(
        sorted(scores.glob("*.parquet")), sorted(imported.glob("*.parquet")), strict=True
    ):
        assert comparable(mine).equals(comparable(theirs), check_metadata=True)
    result = run_cli("import", "datacomp", str(pool[0]), "-o", str(scores))
    assert f"imported 0 files, {FILES} already imported (skipped)" in result.stdout
    other = run_cli("import", "datacomp", str(pool[0]), "-o", str(scores), "--embeddings", "b32")
    assert_one_line_error(other, "ViT-L/14", "another folder")
    victim.unlink()  # the rest of the pool, but its rows named by downloaded samples' keys: not one folder
    other = run_cli("import", "datacomp", str(pool[0]), "-o", str(scores), "--shards", str(tmp_path))
    assert_one_line_error(other, "was imported with keys", "--shards")


# ------------------------------------------------------------------------------------ downloaded shards


def write_downloaded_shards(folder: Path, uids: list[str], failed: set[str]) -> None:
    """img2dataset's output of a DataComp download (save_additional_columns=['uid']): a real tar per
    shard, its .parquet and .json members keeping each sample's uid; `failed` uids did not download."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    for shard in range(2):
        part = uids[shard::2]
        records = [
            ShardRecord(
                key=f"{shard:05d}{row:04d}",
                caption=f"a caption of {uid[:8]}",
                image=None if uid in failed else buffer.getvalue(),
                url=f"https://example.com/{uid}.jpg",
                status="failed_to_download" if uid in failed else "success",
                extra={"uid": uid},
            )
            for row, uid in enumerate(part)
        ]
        write_shard(str(folder), shard, records, [pa.field("uid", pa.string())])


def test_shards_match_by_uid_and_the_rest_is_counted_not_downloaded(tmp_path, pool):
    uids = pool[1]
    downloaded = uids[: len(uids) // 2]
    failed = set(downloaded[:10])
    shards = tmp_path / "shards"
    write_downloaded_shards(shards, downloaded, failed)
    scores = tmp_path / "s"
    result = run_cli("import", "datacomp", str(pool[0]), "-o", str(scores), "--shards", str(shards))
    assert result.returncode == 0, result.stderr
    matched = len(downloaded) - len(failed)
    assert f"{matched} matched to {shards}, {len(uids) - matched} not downloaded" in result.stdout
    table = pa.concat_tables(
        pq.read_table(p, columns=["key", "shard", "uid"]) for p in sorted(scores.glob("*.parquet"))
    )
    rows = table.to_pylist()
    got = [r for r in rows if r["shard"]]
    assert len(got) == matched and all(r["uid"] in set(downloaded) - failed for r in got)
    assert all(r["key"] == r["uid"] and r["shard"] == "" for r in rows if not r["shard"])
    by_key = {r["key"]: r for r in got}
    first = pq.read_table(shards / "00000.parquet").to_pylist()[-1]  # a downloaded sample of shard 0
    assert by_key[first["key"]]["uid"] == first["uid"] and by_key[first["key"]]["shard"] == "00000.tar"

    # Selecting among the downloaded samples, then copying them: the samples of the pool's uids.
    manifest, curated = tmp_path / "m", tmp_path / "curated"
    result = run_cli(
        "select",
        str(scores),
        "-o",
        str(manifest),
        "--ratio",
        "0.5",
        "--super-batch",
        "100",
        "--where",
        "shard <> ''",
        "--shards",
        str(shards),
    )
    assert result.returncode == 0, result.stderr
    result = run_cli(
        "export", str(manifest), "-o", str(curated), "--datacomp-subset", str(tmp_path / "s.npy")
    )
    assert result.returncode == 0, result.stderr
    # The copied samples are the subset file's: each exported shard row keeps the uid of its download.
    exported = pa.concat_tables(pq.read_table(p) for p in sorted(curated.glob("*.parquet")))
    subset = {f"{high:016x}{low:016x}" for high, low in np.load(tmp_path / "s.npy").tolist()}
    assert len(subset) == exported.num_rows and set(exported["uid"].to_pylist()) == subset


# ------------------------------------------------------------------------------------- clip-retrieval


def test_clip_retrieval_embeddings_import_by_key_and_by_url(tmp_path):
    folder = tmp_path / "laion"
    write_clip_retrieval(folder)
    result = run_cli(
        "import", "clip-retrieval", str(folder), "-o", str(tmp_path / "s"), "--model", "OpenAI CLIP ViT-B/32"
    )
    assert result.returncode == 0, result.stderr
    scores = open_score_folder(tmp_path / "s")
    assert scores.metadata.model == "OpenAI CLIP ViT-B/32 as shipped in clip-retrieval's layout"
    table = pq.read_table(scores.files[0])
    assert table["key"][0].as_py() == "000000000" and {
        "pool_key",
        "pool_status",
        "pool_similarity",
        "url",
    } <= set(table.column_names)
    result = run_cli("import", "clip-retrieval", str(folder), "-o", str(tmp_path / "u"), "--key", "url")
    assert result.returncode == 0, result.stderr
    assert (
        pq.read_table(sorted((tmp_path / "u").glob("*.parquet"))[0])["key"][0].as_py().startswith("https://")
    )
    manifest = tmp_path / "m"
    run_cli("select", str(tmp_path / "s"), "-o", str(manifest), "--method", "clipscore", "--ratio", "0.5")
    result = run_cli("export", str(manifest), "--url-list", str(tmp_path / "urls.parquet"))
    assert result.returncode == 0, result.stderr
    listed = pq.read_table(tmp_path / "urls.parquet")
    assert listed.column_names == ["url", "caption"] and listed.num_rows == 200
    assert_one_line_error(
        run_cli("export", str(manifest), "--datacomp-subset", str(tmp_path / "x.npy")), "no uid column"
    )


def test_clip_retrieval_refuses_missing_arrays_and_unmatched_embeddings(tmp_path):
    folder = tmp_path / "laion"
    write_clip_retrieval(folder)
    text = np.load(folder / "text_emb" / "text_emb_1.npy")
    np.save(folder / "text_emb" / "text_emb_1.npy", text[np.random.default_rng(0).permutation(len(text))])
    np.save(folder / "text_emb" / "text_emb_0.npy", text[np.random.default_rng(1).permutation(len(text))])
    result = run_cli("import", "clip-retrieval", str(folder), "-o", str(tmp_path / "s"))
    assert_one_line_error(result, "do not match each other", "row order")
    (folder / "img_emb" / "img_emb_1.npy").unlink()
    assert_one_line_error(
        run_cli("import", "clip-retrieval", str(folder), "-o", str(tmp_path / "s")), "img_emb_1.npy"
    )


def test_import_has_help():
    # In process: tests/test_cli.py's `curate --help` in a process of its own imports this command too.
    result = run_cli("import", "datacomp", "--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("Usage: curate import datacomp [OPTIONS]")


# ----------------------------------------------------------------------------------------- calibration


def test_calibrated_pair_loss_separates_matched_from_unmatched_samples():
    """On planted data (a fifth of the captions describe another sample), the fitted (t, b) are the optimum
    of select's own pair loss, its diagonal loss ranks the matched samples far below the others, and as a
    pair classifier it tells matched pairs from unmatched ones, which OpenAI CLIP's own t = 100 with no bias
    does not."""
    n, dim = 4000, 64
    rng = np.random.default_rng(0)
    content = rng.standard_normal((n, dim)).astype(np.float32)  # what sample i shows
    misaligned = rng.random(n) < 0.2
    described = np.where(misaligned, rng.permutation(n), np.arange(n))  # what its caption describes

    def unit_rows(x):
        return torch.from_numpy(unit(x).astype(np.float32))

    # A matched pair's cosine is about 0.3 and an unmatched one's about 0, each give or take 0.1: as
    # overlapping as a web crawl's under CLIP, so the fit is a real trade-off, not a separable problem.
    image = unit_rows(content + 1.5 * rng.standard_normal((n, dim)).astype(np.float32))
    text = unit_rows(content[described] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32))
    fit = calibrate(image, text, seed=0, batch_size=512, batches=8)
    assert fit.logit_scale > 1 and fit.logit_bias < 0 and fit.steps < 100

    # The slow twin: curate.jest's dense pair losses over the same batches give the same objective.
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randperm(n, generator=generator)[:512] for _ in range(8)]
    pairs = pair_similarities(image, text, rows)

    def dense(t, b):
        total = 0.0
        for r in rows:
            emb = PairEmbeddings(image[r], text[r], t, b)
            every = torch.arange(len(r))
            total += float(pair_losses(emb, every, every).sum()) / len(r)
        return total / len(rows)

    best = dense(fit.logit_scale, fit.logit_bias)
    assert pair_loss(pairs, fit.logit_scale, fit.logit_bias) == pytest.approx(best, rel=1e-5)
    for dt, db in ((1, 0), (-1, 0), (0, 0.2), (0, -0.2)):  # the optimum: every step away costs
        assert dense(fit.logit_scale + dt, fit.logit_bias + db) > best
    assert dense(100.0, 0.0) > 10 * best  # OpenAI CLIP's softmax scale, no bias: far from a sigmoid's fit

    # A sample's JEST score starts from its diagonal loss: the matched samples' is far lower.
    loss = diagonal_losses(PairEmbeddings(image, text, fit.logit_scale, fit.logit_bias)).numpy()
    matched, unmatched = loss[~misaligned], loss[misaligned]
    assert np.median(unmatched) - np.median(matched) > 3.0  # nats (measured: 8.23 - 3.21)
    ranks = np.empty(n)
    ranks[np.argsort(loss)] = np.arange(n)
    worse = ranks[misaligned].sum() - misaligned.sum() * (misaligned.sum() - 1) / 2
    assert worse / (misaligned.sum() * (~misaligned).sum()) > 0.9  # AUC (measured: 0.965)

    # As pair classifiers: the fit calls a matched pair a match 45 times as often as an unmatched one
    # (measured 0.081 against 0.0018); CLIP's t = 100 with no bias calls half of all unmatched pairs matches.
    def match_probability(t, b):
        every = [torch.sigmoid(t * (image[r] @ text[r].T) + b) for r in rows]
        off = [~torch.eye(len(r), dtype=torch.bool) for r in rows]
        matched = torch.cat([p.diagonal() for p in every]).mean()
        return float(matched), float(torch.cat([p[o] for p, o in zip(every, off, strict=True)]).mean())

    fitted_matched, fitted_unmatched = match_probability(fit.logit_scale, fit.logit_bias)
    assert fitted_matched > 20 * fitted_unmatched
    assert match_probability(100.0, 0.0)[1] > 0.4
