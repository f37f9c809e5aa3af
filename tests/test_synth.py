import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import CurateError
from curate.shards import ReadStats, image_decodes, iter_samples
from curate.synth import NoiseRates, SynthConfig, synthesize
from curate.synth.vocabulary import COLOURS, SHAPES, class_names


def digest(folder: str) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def shard_table(folder: str):
    import pyarrow as pa

    return pa.concat_tables(pq.read_table(p) for p in sorted(Path(folder).glob("*.parquet")))


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, small_synth):
    config = SynthConfig(n=400, seed=7, samples_per_shard=100, eval_per_class=2)
    synthesize(config, str(tmp_path / "again"), workers=2)  # other process layout, same bytes
    assert digest(str(tmp_path / "again")) == digest(small_synth)
    synthesize(SynthConfig(n=400, seed=8, samples_per_shard=100, eval_per_class=2), str(tmp_path / "other"))
    assert digest(str(tmp_path / "other"))["web/00000.tar"] != digest(small_synth)["web/00000.tar"]


def test_noise_kinds_come_at_their_stated_rates_and_are_recorded(small_synth):
    table = shard_table(f"{small_synth}/web")
    counts = Counter(table.column("noise").to_pylist())
    rates = NoiseRates()
    for kind, rate in rates.as_dict().items():
        assert counts[kind] == round(rate * 400), kind
    assert counts["none"] == 400 - sum(round(r * 400) for r in rates.as_dict().values())

    stats = ReadStats()
    samples = list(iter_samples(f"{small_synth}/web", stats))
    assert stats.skipped == Counter(undecodable_image=counts["corrupt"])
    assert all(s.meta["noise"] != "corrupt" for s in samples)
    colour_words = {c: set(words) for c, (_, words) in COLOURS.items()}
    shape_words = {s: set(words) for s, words in SHAPES.items()}

    def names_both(sample) -> bool:
        caption = sample.caption
        return any(w in caption for w in colour_words[sample.meta["colour"]]) and any(
            w in caption for w in shape_words[sample.meta["shape"]]
        )

    by_kind = {kind: [s for s in samples if s.meta["noise"] == kind] for kind in counts}
    assert all(names_both(s) for s in by_kind["none"])
    assert all(not names_both(s) for s in by_kind["partial"] + by_kind["junk"])
    assert all(not names_both(s) for s in by_kind["misaligned"])  # another class's caption
    assert len({s.caption for s in by_kind["none"]}) > 0.8 * len(by_kind["none"])  # varied captions


def test_duplicates_copy_other_pairs_and_corrupt_images_do_not_decode(small_synth):
    samples = {}
    with tarfile.open(f"{small_synth}/web/00000.tar") as tar:
        for member in tar:
            key, ext = member.name.split(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    table = shard_table(f"{small_synth}/web").to_pylist()
    row = {r["key"]: r for r in table}
    clean_scenes = Counter(
        (r["shape"], r["colour"], r["size"], r["position"], r["background"])
        for r in table
        if r["noise"] == "none"
    )
    for key, members in samples.items():
        kind = row[key]["noise"]
        if kind == "corrupt":
            assert not image_decodes(members["jpg"])
        else:
            assert Image.open(io.BytesIO(members["jpg"])).size == (32, 32)
    duplicates = [r for r in table if r["noise"] == "duplicate"]
    assert duplicates and all(
        clean_scenes[(r["shape"], r["colour"], r["size"], r["position"], r["background"])] for r in duplicates
    )


def test_curated_is_clean_and_eval_follows_clip_benchmark_layout(small_synth):
    curated = shard_table(f"{small_synth}/curated")
    assert curated.num_rows == 40 and set(curated.column("noise").to_pylist()) == {"none"}
    eval_dir = Path(small_synth) / "eval"
    assert (eval_dir / "classnames.txt").read_text().splitlines() == class_names()
    templates = (eval_dir / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates and all("{c}" in t for t in templates)
    with tarfile.open(eval_dir / "test/0.tar") as tar:
        names = tar.getnames()
        labels = [int(tar.extractfile(n).read()) for n in names if n.endswith(".cls")]
    assert len(names) == 3 * 64 * 2 and Counter(labels) == {label: 2 for label in range(64)}
    assert {n.split(".")[1] for n in names} == {"png", "cls", "txt"}


def test_class_frequencies_are_long_tailed(tmp_path):
    synthesize(SynthConfig(n=4000, seed=1, eval_per_class=1, curated_fraction=0), str(tmp_path), workers=1)
    labels = Counter(shard_table(f"{tmp_path}/web").column("label").to_pylist())
    frequencies = sorted(labels.values(), reverse=True)
    assert frequencies[0] > 5 * frequencies[len(frequencies) // 2]


def test_rerun_resumes_missing_shards_and_refuses_other_settings(tmp_path, small_synth):
    out = tmp_path / "data"
    config = SynthConfig(n=400, seed=7, samples_per_shard=100, eval_per_class=2)
    synthesize(config, str(out), workers=1)
    (out / "web/00002.tar").unlink()
    (out / "web/00002_stats.json").unlink()
    summary = synthesize(config, str(out), workers=1)
    assert summary.shards_written == 1 and summary.shards_skipped == 4
    assert digest(str(out)) == digest(small_synth)
    with pytest.raises(CurateError, match="other settings"):
        synthesize(SynthConfig(n=400, seed=9, samples_per_shard=100, eval_per_class=2), str(out))


def test_invalid_rates_are_refused():
    with pytest.raises(CurateError, match="sum to at most 1"):
        NoiseRates(misaligned=0.6, junk=0.6)
    with pytest.raises(CurateError, match="--image-size"):
        SynthConfig(image_size=2)


def plan_digest(**settings) -> str:
    """A digest of every planned sample (scene, caption, noise, label, quality), independent of the image
    encoders: what pins the random stream of a seed."""
    from curate.synth.plan import plan

    planned = plan(**settings)
    h = hashlib.sha256()
    for split in (planned.web, planned.curated, planned.eval):
        for s in split:
            c = s.scene
            scene = (c.shape, c.colour, c.size, c.position, c.background, c.tone, c.dx, c.dy, c.angle)
            rest = (c.texture_seed, s.caption, s.noise, s.label, s.quality, s.corrupt_seed)
            h.update(repr((*scene, *rest)).encode())
    return h.hexdigest()


def test_default_crawl_keeps_the_random_stream_it_had_before_concepts_and_duplicate_of():
    # Computed before --concepts and duplicate_of existed: the same seed still plans the same samples.
    settings = {"n": 400, "seed": 7, "noise": NoiseRates(), "curated": 40, "eval_per_class": 2, "zipf": 0.8}
    assert plan_digest(**settings) == "eaba0a4a918d8a73c48257824eaa0178b316bedc402f2ccdbc1b912300bfb031"


def test_duplicates_name_their_source_in_json_and_parquet(small_synth):
    table = shard_table(f"{small_synth}/web").to_pylist()
    row = {r["key"]: r for r in table}
    duplicates = [r for r in table if r["noise"] == "duplicate"]
    assert len(duplicates) == round(NoiseRates().duplicate * 400)
    for r in duplicates:
        source = row[r["duplicate_of"]]
        assert source["noise"] == "none" and source["label"] == r["label"]
        assert (source["shape"], source["colour"], source["size"]) == (r["shape"], r["colour"], r["size"])
    assert all(r["duplicate_of"] is None for r in table if r["noise"] != "duplicate")
    assert shard_table(f"{small_synth}/curated").column("duplicate_of").null_count == 40
    from_json = {s.key: s.meta["duplicate_of"] for s in iter_samples(f"{small_synth}/web", ReadStats())}
    assert from_json == {k: r["duplicate_of"] for k, r in row.items() if r["noise"] != "corrupt"}
    exact = [r for r in duplicates if r["caption"] == row[r["duplicate_of"]]["caption"]]
    assert exact  # about half are exact copies (same caption, same pixels)


def test_concepts_make_a_crawl_of_few_things_in_many_variations(tmp_path):
    config = SynthConfig(n=600, seed=3, concepts=5, samples_per_shard=300, eval_per_class=2)
    summary = synthesize(config, str(tmp_path), workers=1)
    web = shard_table(f"{tmp_path}/web")
    labels = set(web.column("label").to_pylist())
    assert len(labels) == 5 and summary.classes == 5
    assert set(shard_table(f"{tmp_path}/curated").column("label").to_pylist()) <= labels
    assert (tmp_path / "eval/classnames.txt").read_text().splitlines() == [
        class_names()[c] for c in sorted(labels)
    ]
    clean = [r for r in web.to_pylist() if r["noise"] == "none"]
    for label in labels:
        rows = [r for r in clean if r["label"] == label]
        captions = {r["caption"] for r in rows}
        scenes = {(r["size"], r["position"], r["background"]) for r in rows}
        assert len(captions) > 0.8 * len(rows) and len(scenes) > 10, label
    with tarfile.open(tmp_path / "web/00000.tar") as tar:
        images = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    assert len({len(image) for image in images}) > 100  # JPEG qualities vary too, not only the scenes
    with pytest.raises(CurateError, match="--concepts must be between 1 and 64"):
        SynthConfig(concepts=0)
