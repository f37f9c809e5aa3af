"""`curate train` as several processes (torchrun and srun's variables, gloo on this CPU): the job trains what
one process trains on the same global batch, resumes exactly, splits a stream's shards, and fails in one
line, never a hang."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from builders import write_manifest_rows
from conftest import run_cli
from test_train import oracle_reference

from curate.distributed import Ranks
from curate.errors import CurateError
from curate.models import load_checkpoint
from curate.train.online import balanced_assignment
from curate.train.run import read_batches, read_metrics

TIMEOUT = 240  # seconds for a whole job: a hang fails the test instead of the suite
FAST = ["--lr", "2e-3", "--warmup", "2", "--log-every", "1", "--device", "cpu", "--workers", "0"]


def job_env(**extra: str) -> dict[str, str]:
    # One thread per process, as torchrun sets it: two ranks on two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m curate ARGS`, as users launch it (a free port each)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run(
        [*command, "-m", "curate", *args], capture_output=True, text=True, timeout=TIMEOUT, env=job_env()
    )


def our_errors(stderr: str) -> list[str]:
    """The one-line errors of the job's processes. torchrun itself reports a failed job with a traceback
    of its own (ChildFailedError, in torch/distributed); none may come from curate's code."""
    assert not re.search(r'File ".*/(curate|cli)/[^"]*\.py"', stderr), stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def train_args(data: str, run: Path, steps: int, *more: str) -> list[str]:
    return ["train", data, "-o", str(run), "--steps", str(steps), "--cache", "memory", *FAST, *more]


def assert_same_training(one: Path, two: Path, tolerance: float = 1e-5) -> None:
    """The same weights (up to the order of float sums: each rank's part of the loss is summed apart),
    the same losses, and the same keys at every step."""
    ours, theirs = load_checkpoint(one / "latest.pt"), load_checkpoint(two / "latest.pt")
    for name, tensor in ours["state_dict"].items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, theirs["state_dict"][name], atol=tolerance, rtol=0), name
    losses = [[m["loss"] for m in read_metrics(run) if "loss" in m] for run in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def keys_by_step(run: Path) -> dict[int, list[str]]:
    table = read_batches(run).to_pydict()
    out: dict[int, list[str]] = {}
    for step, key in zip(table["step"], table["key"], strict=True):
        out.setdefault(step, []).append(key)
    return out


UNIFORM = ("--batch-size", "16", "--save-every", "2")  # 8 steps: the run the kill test resumes too


@pytest.fixture(scope="module")
def uniform_runs(tmp_path_factory, small_synth) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One process and two, uniform batches from memory: (one, two, the job's outcome)."""
    folder = tmp_path_factory.mktemp("uniform")
    one, two = folder / "one", folder / "two"
    assert run_cli(*train_args(f"{small_synth}/web", one, 8, *UNIFORM)).returncode == 0
    return one, two, torchrun(2, *train_args(f"{small_synth}/web", two, 8, *UNIFORM))


def test_two_processes_train_what_one_trains_from_memory_and_refuse_another_world_size(
    tmp_path, small_synth, uniform_runs, monkeypatch
):
    one, two, result = uniform_runs
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    assert_same_training(one, two)
    assert read_batches(one).equals(read_batches(two))  # each (step, key) once, in the global batch's order
    # Only rank 0 reports: one summary line, which says how many processes trained.
    assert result.stdout.count("trained steps 0→8") == 1 and "over 2 processes" in result.stdout

    resumed = run_cli(*train_args(f"{small_synth}/web", two, 8, *UNIFORM, "--resume"))
    assert resumed.returncode == 1
    assert resumed.stderr.count("\n") == 1 and "was trained by 2" in resumed.stderr

    # Each rank refuses a b that does not split before it joins the others (torchrun's variables, rank 0).
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    odd = run_cli(*train_args(f"{small_synth}/web", tmp_path / "odd", 2, "--batch-size", "15"))
    assert odd.returncode == 1 and odd.stderr == (
        "error: --batch-size 15 does not split over 2 processes: it is the global size, so give a multiple "
        "of 2\n"
    )


def test_two_processes_train_a_manifests_batches_as_one_does(tmp_path, small_synth):
    keys, shards = [], []
    for path in sorted(Path(small_synth, "web").glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "noise"]).to_pylist()
        clean = [row["key"] for row in table if row["noise"] != "corrupt"][:24]
        keys += clean
        shards += [path.with_suffix(".tar").name] * len(clean)
    manifest = write_manifest_rows(tmp_path / "manifest", keys, shards, [i // 16 for i in range(len(keys))])
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("--manifest", str(manifest))
    assert run_cli(*train_args(f"{small_synth}/web", one, 6, *args)).returncode == 0
    result = torchrun(2, *train_args(f"{small_synth}/web", two, 6, *args))
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    assert_same_training(one, two)
    assert read_batches(one).equals(read_batches(two))
    assert keys_by_step(two)[5] == keys[80:96]  # step t trains batch t, whole


def test_online_jest_over_two_processes_chooses_what_one_chooses(tmp_path, small_synth):
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference)
    online = [
        "--online-jest",
        "--ref",
        str(reference),
        "--ratio",
        "0.75",
        "--chunks",
        "4",
        "--batch-size",
        "16",
    ]
    one, two, local = tmp_path / "one", tmp_path / "two", tmp_path / "local"
    assert run_cli(*train_args(f"{small_synth}/web", one, 4, *online)).returncode == 0
    result = torchrun(2, *train_args(f"{small_synth}/web", two, 4, *online))
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    assert_same_training(one, two)
    chosen_one, chosen_two = keys_by_step(one), keys_by_step(two)
    assert chosen_one.keys() == chosen_two.keys() == set(range(4))
    for step in chosen_one:  # the same 16 of the 64, wherever each was trained
        assert sorted(chosen_one[step]) == sorted(chosen_two[step]) and len(set(chosen_two[step])) == 16
    shares = [m["time_share"] for m in read_metrics(two) if "time_share" in m]
    assert all(share["exchange"] > 0 for share in shares)  # the chosen pairs moved between the ranks
    moved = [m["exchanged_pairs"] for m in read_metrics(two) if "exchanged_pairs" in m]
    assert len(moved) == 4 and all(0 <= n <= 8 for n in moved)  # at most b/W of a rank's b/W went elsewhere

    # Local scope: each rank keeps 8 of its own 32; nothing is exchanged, and the batches differ.
    result = torchrun(2, *train_args(f"{small_synth}/web", local, 4, *online, "--online-scope", "local"))
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    chosen_local = keys_by_step(local)
    assert all(len(set(keys)) == 16 for keys in chosen_local.values())
    assert chosen_local != chosen_two
    assert all("exchange" not in m.get("time_share", {}) for m in read_metrics(local))


def test_a_job_killed_after_a_checkpoint_resumes_exactly_under_the_same_world_size(
    tmp_path, small_synth, uniform_runs
):
    _, whole, _ = uniform_runs
    killed = tmp_path / "killed"
    args = UNIFORM
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    job = subprocess.Popen(
        [*command, "curate", *train_args(f"{small_synth}/web", killed, 8, *args)],
        env=job_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while not (killed / "latest.pt").exists() and job.poll() is None:  # the first checkpoint, whole
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    job.wait(timeout=60)
    assert load_checkpoint(killed / "latest.pt")["step"] < 8  # killed before the end

    result = torchrun(2, *train_args(f"{small_synth}/web", killed, 8, *args, "--resume"))
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    assert_same_training(whole, killed, tolerance=0)  # the same processes: bit for bit
    assert read_batches(killed).equals(read_batches(whole))
    assert [m["step"] for m in read_metrics(killed)] == list(range(1, 9))  # none twice


def test_a_stream_over_two_processes_reads_every_shard_once_per_epoch(tmp_path, small_synth):
    run = tmp_path / "run"
    args = ["train", f"{small_synth}/web", "-o", str(run), "--steps", "24", "--batch-size", "16"]
    flags = ["--cache", "stream", "--shuffle-buffer", "50", *FAST[:-2], "--workers", "2"]
    result = torchrun(2, *args, *flags)
    assert result.returncode == 0, our_errors(result.stderr) or result.stderr[-2000:]
    keys = read_batches(run)["key"].to_pylist()
    # 2 ranks x 2 workers: each of the 4 shards is one stream's; 24 steps draw 96 of each shard's 99
    # trainable samples, none twice.
    assert len(keys) == 24 * 16 and len(set(keys)) == len(keys)
    shard_of = {}
    for path in sorted(Path(small_synth, "web").glob("*.parquet")):
        shard_of.update(dict.fromkeys(pq.read_table(path, columns=["key"])["key"].to_pylist(), path.stem))
    per_shard = {}
    for key in keys:
        per_shard[shard_of[key]] = per_shard.get(shard_of[key], 0) + 1
    assert sorted(per_shard.values()) == [96] * 4


def test_a_rank_that_fails_ends_the_job_in_one_line_under_torchrun(tmp_path, small_synth):
    """Rank 0 alone reads the eval set: a missing one fails rank 0 while rank 1 waits in the first step."""
    args = train_args(
        f"{small_synth}/web", tmp_path / "run", 4, "--batch-size", "16", "--eval", str(tmp_path)
    )
    result = torchrun(2, *args)
    assert result.returncode != 0
    # Rank 0's reason; rank 1 is ended by the launcher, or ends itself having lost rank 0 first.
    errors = our_errors(result.stderr)
    assert "eval" in errors[0] and len(errors) <= 2, result.stderr[-2000:]
    assert all("lost the other processes" in line for line in errors[1:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_srun_tasks_join_by_slurms_variables_and_a_lost_peer_ends_the_other_in_one_line(
    tmp_path, small_synth
):
    """One task per process, as `srun` starts them (no launcher to end the others): rank 0 fails alone and
    rank 1, left waiting in a collective, fails in one line within --collective-timeout."""
    port = str(free_port())
    args = train_args(
        f"{small_synth}/web", tmp_path / "run", 4, "--batch-size", "16", "--eval", str(tmp_path)
    )
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "curate", *args, "--collective-timeout", "20"],
            env=job_env(
                SLURM_PROCID=str(rank),
                SLURM_STEP_NUM_TASKS="2",
                SLURM_LOCALID=str(rank),
                SLURM_STEP_TASKS_PER_NODE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=TIMEOUT) for task in tasks]
    for task, (_, stderr) in zip(tasks, outputs, strict=True):
        assert task.returncode == 1, stderr[-2000:]
        assert len(our_errors(stderr)) == 1 and stderr.splitlines()[-1].startswith("error:")
    assert "eval" in outputs[0][1]
    assert "rank 1 of 2: lost the other processes" in outputs[1][1]


def test_ranks_come_from_torchrun_or_srun_and_a_bad_environment_is_one_line():
    assert Ranks.from_environment({}) == Ranks()
    torchrun_env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert Ranks.from_environment(torchrun_env) == Ranks(3, 8, 1, 2)
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "5"}
    slurm |= {"SLURM_STEP_TASKS_PER_NODE": "8(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert Ranks.from_environment(slurm) == Ranks(5, 16, 5, 8)
    # The batch script itself (one task) is one process, whatever the allocation's size.
    assert Ranks.from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}) == Ranks()
    with pytest.raises(CurateError, match="MASTER_ADDR and MASTER_PORT is not set"):
        Ranks.from_environment({k: v for k, v in slurm.items() if not k.startswith("MASTER")})
    with pytest.raises(CurateError, match="not a rank of"):
        Ranks.from_environment({"RANK": "2", "WORLD_SIZE": "2"})
    assert Ranks(1, 2, 1).share(32, "--batch-size") == 16 and Ranks(1, 2, 1).part(32) == slice(16, 32)
    with pytest.raises(CurateError, match="--batch-size 15 does not split over 2 processes"):
        Ranks(0, 2).share(15, "--batch-size")


@pytest.mark.parametrize("seed", range(20))
def test_a_balanced_assignment_trains_each_chosen_pair_once_and_keeps_what_it_can_local(seed):
    generator = torch.Generator().manual_seed(seed)
    world, per_rank, b = 4, 40, 32
    chosen = torch.randperm(world * per_rank, generator=generator)[:b].tolist()
    plans = balanced_assignment(chosen, per_rank, world)
    trained = [row for plan in plans for row in plan.rows]
    assert sorted(trained) == sorted(chosen)  # every chosen pair once
    assert all(len(plan.rows) == b // world for plan in plans)  # b/W each
    held = [sum(row // per_rank == rank for row in chosen) for rank in range(world)]
    moved = sum(len(plan.rows) - len(plan.kept) for plan in plans)
    assert moved == sum(max(0, h - b // world) for h in held)  # only the surplus moves
    for source in range(world):  # what one rank sends is what the others receive from it
        for target in range(world):
            assert len(plans[source].sends[target]) == plans[target].receives[source]
