"""`curate dedup`."""

from __future__ import annotations

from typing import Annotated

import typer

from curate_cli.console import command_line, err, out, progress_bar


def dedup_command(
    scores: Annotated[
        str, typer.Argument(metavar="SCORES", help="Score folder of the reference model (curate score).")
    ],
    output: Annotated[
        str,
        typer.Option("--output", "-o", metavar="KEEP", help="Folder for keep.parquet and summary.json."),
    ],
    threshold: Annotated[
        float,
        typer.Option(
            metavar="T",
            help="Two samples are near duplicates when the cosine of their reference image embeddings is "
            "above T, in (0, 1]. With a strong reference 0.98 catches re-encodes and crops and 0.9 also "
            "looser variants of one picture; a weak one puts a whole class near one point and needs T "
            "much closer to 1 (measure it on curate synth: examples/dedup_recall.sql). T = 1 removes "
            "nothing.",
        ),
    ],
    clusters: Annotated[
        int | None,
        typer.Option(
            metavar="K", help="k-means clusters compared within (default √N, at least 20 sample rows each)."
        ),
    ] = None,
    sample: Annotated[int, typer.Option(help="Rows k-means is fitted on (a seeded sample).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Same inputs and seed, byte-identical keep.parquet.")] = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Remove semantic near duplicates (SemDeDup): keep one sample of each group of look-alike images.

    Reads the reference's image embeddings from SCORES. k-means (seeded, fitted on at most --sample rows)
    splits the crawl into K clusters; within a cluster, two samples whose image embeddings have a cosine
    above T are near duplicates, and chains of them form a group. Each group keeps the sample with the
    highest image–text similarity (the best-captioned copy; of equals, the first in the score files) and
    drops the rest. Near duplicates in two different clusters are not compared. Only eligible rows (status
    ok, a finite similarity) are compared; the others are not in KEEP.

    \b
    KEEP/keep.parquet  one row per kept key: key, shard, similarity, cluster, group_size (1: unique)
    KEEP/summary.json  threshold, clusters, rows in, kept, removed, groups, removed by shard, seconds

    `curate select SCORES --keep KEEP` selects among the kept keys only. Memory holds the k-means sample and
    one bucket of clusters (about a million rows) at a time; the rest is spilled to $TMPDIR.

    \b
    example: curate dedup scores/ -o keep/ --threshold 0.95
             curate select scores/ -o manifest/ --ratio 0.8 --keep keep/
    """
    from curate.dedup import DedupConfig, dedup

    config = DedupConfig(
        threshold=threshold,
        clusters=clusters,
        sample=sample,
        seed=seed,
        device=device,
        command=command_line(),
    )
    with progress_bar("dedup", unit="rows") as progress:
        summary = dedup(str(scores), str(output), config, progress)
    out.print(
        f"kept {summary.kept} of {summary.rows_in} (removed {summary.removed} in {summary.groups} groups; "
        f"{summary.clusters} clusters, T {summary.threshold:g}) → {output}"
    )
    if summary.removed > summary.rows_in / 2:
        # SemDeDup removes about half of LAION with a strong model; more than that usually means the
        # reference cannot tell a class's images apart at this T.
        err.print(
            f"warning: removed {summary.removed / summary.rows_in:.0%} of the rows: is the reference strong "
            "enough for this T? (examples/dedup_recall.sql measures it on curate synth)"
        )
