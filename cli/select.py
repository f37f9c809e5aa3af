"""`curate select`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from curate_cli.backend import Backend, GpusPerWorker, RayAddress, WorkersPerNode, ray_config
from curate_cli.console import command_line, err, out, progress_bar

if TYPE_CHECKING:  # the library is imported when the command runs, so --help stays fast
    from curate.select import SelectConfig, SelectSummary


def select_command(
    scores: Annotated[
        str, typer.Argument(metavar="SCORES", help="Score folder of the reference model (curate score).")
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="MANIFEST",
            help="Folder for manifest.parquet (or part-*.parquet, one per partition) and summary.json.",
        ),
    ],
    ratio: Annotated[
        float,
        typer.Option(
            help="Filter ratio F: the share of each super-batch (of the whole crawl for clipscore and "
            "negclip) left out (0.8 keeps 20%)."
        ),
    ],
    super_batch: Annotated[
        int | None, typer.Option(metavar="B", help="Samples per super-batch (default 16384).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(metavar="b", help="Samples to keep per super-batch instead: sets B = b / (1 - F)."),
    ] = None,
    chunks: Annotated[int, typer.Option(metavar="N", help="JEST draws the batch in N chunks.")] = 16,
    method: Annotated[
        str,
        typer.Option(
            help="Per super-batch: jest, independent (no cross terms), topk or random. Over the whole crawl: "
            "clipscore (DataComp's CLIP-score filter, the global top 1 − F by similarity; its best simple "
            "filter keeps about 30%, --ratio 0.7) or negclip (negCLIPLoss: that score less each sample's "
            "mean logsumexp over 10 random batches of B)."
        ),
    ] = "jest",
    criterion: Annotated[
        str | None,
        typer.Option(
            help="learnability (learner − reference), easy (−reference) or hard (learner) "
            "(default: learnability with --learner, else easy)."
        ),
    ] = None,
    learner: Annotated[
        str | None,
        typer.Option(
            metavar="SCORES", help="A second model's score folder, matched by key (learnability, hard)."
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the draws.")] = 1.0,
    false_negatives: Annotated[
        str,
        typer.Option(
            metavar="none|mask:T",
            help="mask:T leaves out of JEST's cross terms every pair the reference sees as one thing (image-"
            "image or text-text cosine above T, e.g. 0.95): a near duplicate or one concept phrased twice "
            "is a false negative, which the joint score would otherwise seek out.",
        ),
    ] = "none",
    where: Annotated[
        str | None,
        typer.Option(
            metavar="SQL",
            help="DuckDB predicate over the score columns, applied before selection (it can read no other "
            "file).",
        ),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(
            metavar="KEEP",
            help="A curate dedup output: only the samples it kept (one per near-duplicate group) may be "
            "selected.",
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            metavar="SHARDS", help="Where the scored shards live; recorded so curate export finds them."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            metavar="S",
            help="Make S batches (the learner's steps) from as many seeded passes as they need; "
            "a key may recur across passes, never within a batch.",
        ),
    ] = None,
    passes: Annotated[
        int | None, typer.Option(metavar="K", help="Or make K whole passes over the eligible samples.")
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            metavar="P",
            help="Split the score files into exactly P partitions: contiguous ranges of files (in the "
            "folder's order), each selected on its own by one process (one Ray task with --backend ray) "
            "and written as its own MANIFEST/part-0000k.parquet. A batch's members then all come from one "
            "partition's files (P = 1 is one global shuffle, the default for crawls under --partition-size); "
            "batches interleave partitions in training order, --steps is shared out by rows, --passes "
            "applies to each, and clipscore/negclip keep a merged threshold's top share (within one "
            "histogram bin of the exact count). At most one per score file.",
        ),
    ] = None,
    partition_size: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Or as many partitions as make each about N samples (default 16,000,000): what one "
            "process holds is ~100 bytes per sample of index plus one window of embeddings.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Same inputs and seed, byte-identical manifest.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    backend: Backend = "local",
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    workers_per_node: WorkersPerNode = None,
) -> None:
    """Choose the samples to keep: JEST over seeded super-batches of scored samples.

    Samples are shuffled into super-batches of B that mix many shards (status != ok never enters; a key
    seen twice enters once). From each, one batch of b = round((1 − F)·B) samples is drawn by --method
    under --criterion and written to MANIFEST/manifest.parquet (key, shard, batch, super_batch, chunk,
    score) in training order: `curate train --manifest` trains batch t at step t. One pass gives about
    |eligible| / B batches, its short last super-batch keeping the same ratio; --steps S makes S whole
    batches from as many passes as that takes, each a new seeded shuffle. MANIFEST/summary.json records the
    command, parameters, models, counts and, per super-batch, the mean learnability of the selected batch
    beside a random batch of the same size. Memory holds about 8 super-batches of embeddings.
    --method clipscore or negclip instead keeps the global top (1 − F) of the whole eligible crawl by one
    score per sample and cuts batches of b from seeded shuffles of what it kept (super_batch −1).
    Past --partition-size samples (or with --partitions P) the score files are split into partitions, each
    selected on its own (its own index, shuffle and batches) into MANIFEST/part-*.parquet; readers read
    all parts. --backend ray runs one task per partition on a Ray cluster, each reading its own files:
    the same parts as the local backend, byte for byte (on the same device type).

    \b
    example: curate select scores/ -o manifest/ --ratio 0.8 --batch-size 256 --steps 10000 --shards shards/
             curate select scores/ -o manifest/ --ratio 0.8 --shards shards/
             curate select scores/ -o manifest/ --ratio 0.9 --learner early/ --where 'similarity > 0.05'
             curate select scores/ -o manifest/ --ratio 0.5 --batch-size 4096 --method independent
             curate select scores/ -o manifest/ --ratio 0.7 --batch-size 256 --steps 10000 --method clipscore
    """
    from curate.select import SelectConfig, select

    config = SelectConfig(
        ratio=ratio,
        super_batch=super_batch,
        batch_size=batch_size,
        chunks=chunks,
        method=method,
        criterion=criterion,
        temperature=temperature,
        false_negatives=false_negatives,
        where=where,
        keep=str(keep) if keep else None,
        seed=seed,
        steps=steps,
        passes=passes,
        partitions=partitions,
        partition_size=partition_size,
        device=device,
        learner=str(learner) if learner else None,
        shards=shards,
        command=command_line(),
        backend=backend,
        ray=ray_config(ray_address, gpus_per_worker, workers_per_node),
    )

    def warn(message: str) -> None:
        err.print(f"warning: {message}")

    unit = "partitions" if backend == "ray" else "super-batches"  # a Ray task reports when its partition ends
    with progress_bar("select", unit=unit) as progress:
        summary = select(str(scores), str(output), config, progress, warn)
    counts = summary.counts
    if summary.filter is not None:
        out.print(_filter_line(summary, config, output))
        return
    last = summary.last
    batches = len(summary.super_batches)
    note = ""
    if summary.skipped_last:
        note = f"; the last {summary.skipped_last} samples were too few to select from"
    elif last is not None and last.size < config.super_batch and batches > 1:
        note = f"; last one short: {last.size} samples, {last.selected} kept"
    if summary.passes.passes > 1:
        note = (
            f"; {summary.passes.passes} passes, {summary.unique_keys} distinct keys, "
            f"{summary.repeats} repeats"
        )
    if len(summary.partitions) > 1:
        note += f"; {len(summary.partitions)} partitions"
    if summary.masked_share:
        share = summary.masked_share
        note += (
            f"; false negative pairs masked {share['selected']:.1%} selected vs {share['random']:.1%} random"
        )
    out.print(
        f"selected {summary.selected} of {counts['seen']} samples ({counts['eligible']} eligible, "
        f"in {batches} batch{'es' if batches != 1 else ''} of {config.batch_size} from super-batches of "
        f"{config.super_batch}{note}): "
        f"mean {config.criterion} {summary.selected_score:.4f} selected vs {summary.random_score:.4f} random "
        f"→ {output}"
    )


def _filter_line(summary: SelectSummary, config: SelectConfig, output: str) -> str:
    """The last line of a global filter (clipscore, negclip): what it kept, then the batches made of it."""
    kept, counts = summary.filter, summary.counts
    batches = kept.batches
    passes = summary.passes.passes
    note = f"; {passes} passes, {summary.unique_keys} distinct keys, {summary.repeats} repeats"
    if passes == 1:
        note = ""
    if summary.threshold is not None:  # several partitions: a histogram's threshold, not the exact count
        bound = summary.threshold["bound"]
        note += f"; {len(summary.partitions)} partitions, within {bound} of the exact top share"
    return (
        f"kept the top {1.0 - config.ratio:.0%} by {kept.score} (threshold {kept.threshold:.4f}): "
        f"{kept.kept} of {counts['seen']} samples ({counts['eligible']} eligible), "
        f"selected {summary.selected} in {batches} batch{'es' if batches != 1 else ''} of {config.batch_size}"
        f"{note} → {output}"
    )
