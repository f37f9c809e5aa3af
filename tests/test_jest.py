"""The selection core against its slow twins: dense JEST, the full loss matrix, exact subset enumeration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curate.errors import CurateError
from curate.jest import (
    PairEmbeddings,
    batch_totals,
    choose,
    chunk_sizes,
    false_negatives,
    pair_losses,
    pair_scores,
    sample_independent,
    sample_jest,
    sample_random,
    select_batch,
)
from curate.jest.negclip import batch_logsumexp, diagonal_logits
from curate.jest.oracle import dense_jest, dense_matrix, gibbs_subsets, matrix_subset_score, subset_scores

F64 = torch.float64


def unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def random_pair(n: int, dim: int, seed: int, scale: float, bias: float, noise: float = 0.8) -> PairEmbeddings:
    g = torch.Generator().manual_seed(seed)
    image = unit(g, n, dim)
    text = F.normalize(image + noise * unit(g, n, dim), dim=-1)
    return PairEmbeddings(image, text, scale, bias)


def planted(n, groups, group_size, noisy, dim=64, seed=0, dtype=torch.float32):
    """Groups of mutual hard negatives for the learner that the reference separates, plus noisy pairs.

    Reference: every image equals its text (an easy positive) except the noisy pairs, whose text is
    unrelated (reference loss ~10). Learner: items outside groups are learned (image == text); items of a
    group scatter around a shared centre, so every cross pair in a group looks positive to the learner.
    """
    g = torch.Generator().manual_seed(seed)
    ref_image = unit(g, n, dim)
    ref_text = ref_image.clone()
    learn_image = unit(g, n, dim)
    learn_text = learn_image.clone()
    perm = torch.randperm(n, generator=g)
    grouped = perm[: groups * group_size].view(groups, group_size)
    noise = perm[groups * group_size : groups * group_size + noisy]
    centres = unit(g, groups, 1, dim)
    learn_image[grouped] = F.normalize(centres + 0.5 * unit(g, groups, group_size, dim), dim=-1)
    learn_text[grouped] = F.normalize(centres + 0.5 * unit(g, groups, group_size, dim), dim=-1)
    ref_text[noise] = unit(g, noisy, dim)
    learn_text[noise] = unit(g, noisy, dim)
    reference = PairEmbeddings(ref_image.to(dtype), ref_text.to(dtype), 20.0, -10.0)
    learner = PairEmbeddings(learn_image.to(dtype), learn_text.to(dtype), 10.0, -5.0)
    return reference, learner, noise


@pytest.fixture(scope="module")
def models():
    return random_pair(512, 32, seed=1, scale=20.0, bias=-8.0), random_pair(
        512, 32, seed=2, scale=10.0, bias=-5.0
    )


def scores_for(criterion, models):
    return pair_scores(criterion, *models)


# --- pair losses ------------------------------------------------------------------------------------


def test_pair_losses_blockwise_match_dense_logsigmoid():
    emb = random_pair(96, 16, seed=0, scale=50.0, bias=-20.0)  # large logits: overflow would show
    logits = emb.logit_scale * emb.image.double() @ emb.text.double().T + emb.logit_bias
    z = 2 * torch.eye(96, dtype=F64) - 1
    dense = -F.logsigmoid(z * logits)
    rows, cols = torch.tensor([5, 0, 77, 40, 41]), torch.arange(30, 60)
    block = pair_losses(emb, rows, cols)
    assert block.dtype == torch.float32
    torch.testing.assert_close(block.double(), dense[rows][:, cols], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(pair_losses(emb, torch.arange(96), torch.arange(96))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype):
    emb = random_pair(64, 256, seed=3, scale=100.0, bias=-10.0)
    half = PairEmbeddings(emb.image.to(dtype), emb.text.to(dtype), emb.logit_scale, emb.logit_bias)
    rounded = PairEmbeddings(half.image.double(), half.text.double(), emb.logit_scale, emb.logit_bias)
    every = torch.arange(64)
    got = pair_losses(half, every, every)
    assert got.dtype == torch.float32
    # fp32 accumulation of the rounded inputs: off by fp32 rounding only, not by half precision.
    torch.testing.assert_close(got.double(), pair_losses(rounded, every, every, F64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("criterion", ["learnability", "easy", "hard"])
def test_cross_sums_match_dense_matrix_off_the_chunk(models, criterion):
    scores = scores_for(criterion, models)
    matrix = dense_matrix(scores, F64)
    chunk = torch.randperm(512, generator=torch.Generator().manual_seed(0))[:37]
    # A tiny block forces many uneven column blocks.
    streamed = scores.cross_sums(chunk, F64, block_elements=37 * 2 * 50)
    expected = matrix[:, chunk].sum(1) + matrix[chunk, :].sum(0)
    outside = torch.ones(512, dtype=torch.bool)
    outside[chunk] = False
    torch.testing.assert_close(streamed[outside], expected[outside], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores.diagonal(F64), matrix.diagonal(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("criterion", ["learnability", "easy", "hard"])
def test_streaming_equals_dense_in_fp32(models, criterion):
    # fp32 is what users run: the streaming sums add in another order than the dense twin's (per model,
    # per column block), which moves the last bits of u but must not move a single draw.
    scores = scores_for(criterion, models)
    for seed in range(4):
        fast = sample_jest(scores, 102, generator=torch.Generator().manual_seed(seed))
        slow = dense_jest(scores, 102, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(fast.indices, slow.indices)
        torch.testing.assert_close(fast.score, slow.score, rtol=1e-5, atol=1e-4)


def test_batch_score_is_the_sum_over_the_subset_block(models):
    indices = torch.tensor([3, 99, 7, 400, 12])
    matrix = dense_matrix(scores_for("learnability", models), F64)
    got = batch_totals(indices, *models, criterion="learnability", dtype=F64).score
    torch.testing.assert_close(got, matrix[indices][:, indices].sum())


@pytest.mark.parametrize("criterion", ["learnability", "easy", "hard"])
def test_batch_score_in_row_blocks_equals_the_dense_block(models, criterion):
    indices = torch.randperm(512, generator=torch.Generator().manual_seed(1))[:300]
    matrix = dense_matrix(scores_for(criterion, models), F64)
    # 300 rows in blocks of 64: four full blocks and an uneven last one.
    got = batch_totals(indices, *models, criterion=criterion, dtype=F64, block_rows=64).score
    torch.testing.assert_close(got, matrix[indices][:, indices].sum(), rtol=1e-12, atol=1e-9)


def test_choice_scores_the_chosen_and_a_random_batch_as_means_over_the_pairs(models):
    reference, learner = models
    choice = choose(
        "jest", reference, learner, "learnability", 0.75, 4, 1.0,
        torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
    )  # fmt: skip
    matrix = dense_matrix(scores_for("learnability", models), F64)
    chosen = choice.selection.indices
    assert len(chosen) == 128
    torch.testing.assert_close(
        choice.selected_score, matrix[chosen][:, chosen].mean(), rtol=1e-5, atol=1e-7, check_dtype=False
    )
    random = torch.randperm(512, generator=torch.Generator().manual_seed(1))[:128]
    torch.testing.assert_close(
        choice.random_score, matrix[random][:, random].mean(), rtol=1e-5, atol=1e-7, check_dtype=False
    )
    # The comparison batch has its own generator: the selection is the sampler's, draw for draw.
    alone = select_batch(
        "jest", reference, learner, "learnability", 0.75, 4, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(alone.indices, chosen)


# --- samplers: exactness and bookkeeping ---------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["learnability", "easy", "hard"])
@pytest.mark.parametrize(
    ("chunks", "temperature", "first"),
    [
        (1, 1.0, "diagonal"),
        (3, 0.3, "uniform"),
        (16, 1.0, "diagonal"),
        (16, 5.0, "uniform"),
        (7, 0.05, "diagonal"),
    ],
)
def test_streaming_equals_dense(models, criterion, chunks, temperature, first):
    scores = scores_for(criterion, models)
    kwargs = {"chunks": chunks, "temperature": temperature, "first_chunk": first, "dtype": F64}
    fast = sample_jest(scores, 102, generator=torch.Generator().manual_seed(7), block_elements=5000, **kwargs)
    slow = dense_jest(scores, 102, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(fast.indices, slow.indices)
    assert torch.equal(fast.chunk, slow.chunk)
    torch.testing.assert_close(fast.score, slow.score, rtol=1e-10, atol=1e-10)


def test_selection_size_chunks_and_distinct(models):
    sel = select_batch("jest", *models, ratio=0.8, chunks=16, generator=torch.Generator().manual_seed(0))
    assert len(sel) == 102 == round(0.2 * 512)  # 102 = 6 * 7 + 10 * 6: uneven chunks
    assert sel.indices.unique().numel() == 102
    assert (
        sel.indices.dtype == torch.int64
        and sel.chunk.dtype == torch.int32
        and sel.score.dtype == torch.float32
    )
    assert torch.bincount(sel.chunk).tolist() == chunk_sizes(102, 16) == [7] * 6 + [6] * 10
    assert (sel.chunk.diff() >= 0).all()


def test_same_seed_same_result_other_seed_differs(models):
    def run(seed):
        return select_batch("jest", *models, ratio=0.5, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.score, b.score)
    assert not torch.equal(a.indices, c.indices)


def test_one_chunk_is_independent(models):
    scores = scores_for("learnability", models)
    for temperature in (0.5, 2.0):
        jest = sample_jest(
            scores, 100, chunks=1, temperature=temperature, generator=torch.Generator().manual_seed(5)
        )
        indep = sample_independent(
            scores, 100, temperature=temperature, generator=torch.Generator().manual_seed(5)
        )
        assert torch.equal(jest.indices, indep.indices) and torch.equal(jest.score, indep.score)


def test_later_scores_are_conditional_and_first_chunk_is_diagonal(models):
    scores = scores_for("learnability", models)
    sel = sample_jest(scores, 64, chunks=4, generator=torch.Generator().manual_seed(1), dtype=F64)
    matrix = dense_matrix(scores, F64)
    first = sel.chunk == 0
    torch.testing.assert_close(sel.score[first], matrix.diagonal()[sel.indices[first]])
    before = sel.indices[sel.chunk < 3]
    k = sel.indices[sel.chunk == 3][0]
    expected = matrix[k, k] + matrix[k, before].sum() + matrix[before, k].sum()
    torch.testing.assert_close(sel.score[sel.chunk == 3][0], expected)


def test_topk_and_random_baselines(models):
    diagonal = dense_matrix(scores_for("easy", models)).diagonal()
    top = select_batch("topk", models[0], None, criterion="easy", ratio=0.75)
    assert set(top.indices.tolist()) == set(torch.topk(diagonal, 128).indices.tolist())
    torch.testing.assert_close(top.score, diagonal[top.indices])
    # random ignores the criterion: the same generator gives the same indices under any criterion.
    r1 = select_batch(
        "random", *models, criterion="hard", ratio=0.75, generator=torch.Generator().manual_seed(2)
    )
    r2 = select_batch(
        "random", *models, criterion="easy", ratio=0.75, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(r1.indices, r2.indices) and r1.indices.unique().numel() == 128


def test_no_autograd_graph(models):
    ref, lea = models
    image = lea.image.clone().requires_grad_(True)
    learner = PairEmbeddings(image, lea.text, lea.logit_scale, lea.logit_bias)
    sel = select_batch("jest", ref, learner, ratio=0.8, generator=torch.Generator().manual_seed(0))
    assert not sel.score.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 0.99, "chunks": 16}, "fewer than chunks"),
        ({"chunks": 1024}, "smaller than chunks"),
        ({"method": "greedy"}, "unknown method"),
        ({"criterion": "fun"}, "unknown criterion"),
        ({"learner": None}, "needs learner"),
        ({"first_chunk": "best"}, "first_chunk"),
        ({"temperature": 0.0}, "temperature"),
        ({"learner": random_pair(100, 32, seed=0, scale=10.0, bias=-5.0)}, "learner has 100"),
    ],
)
def test_invalid_arguments_raise_value_errors(models, kwargs, message):
    args = {"method": "jest", "reference": models[0], "learner": models[1], "ratio": 0.8} | kwargs
    with pytest.raises(ValueError, match=message) as info:
        select_batch(**args)
    assert isinstance(info.value, CurateError)


def test_mismatched_embedding_shapes_raise():
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        PairEmbeddings(torch.zeros(8, 4), torch.zeros(8, 5), 10.0, -10.0)


# --- samplers: does joint selection do what it promises -------------------------------------------------


def test_planted_structure_jest_beats_independent_beats_random():
    reference, learner, noise = planted(512, groups=8, group_size=16, noisy=64)
    g = torch.Generator().manual_seed(0)
    totals, noisy_share = {}, {}
    for method in ("jest", "independent", "random"):
        runs = [select_batch(method, reference, learner, ratio=0.8, generator=g) for _ in range(16)]
        totals[method] = (
            torch.stack([batch_totals(r.indices, reference, learner).score for r in runs]).mean().item()
        )
        noisy_share[method] = sum(torch.isin(r.indices, noise).sum().item() for r in runs) / (16 * 102)
    assert totals["jest"] > 1.5 * totals["independent"], totals
    assert totals["independent"] > totals["random"] + 50.0, (
        totals
    )  # random pays ~-5 per noisy pair, ~13 of them
    # Noisy pairs are 1/8 of the data and of a random batch; selection keeps under a quarter of that.
    assert noisy_share["random"] > 0.08
    assert noisy_share["jest"] < 0.03 and noisy_share["independent"] < 0.03, noisy_share
    easy = [select_batch("jest", reference, None, "easy", 0.8, generator=g).indices for _ in range(4)]
    assert sum(torch.isin(i, noise).sum().item() for i in easy) / (4 * 102) < 0.03


def test_gibbs_oracle_matches_exhaustive_enumeration():
    reference, learner, _ = planted(20, groups=2, group_size=8, noisy=4, seed=1)
    matrix = dense_matrix(pair_scores("learnability", reference, learner), F64)
    _, scores = subset_scores(matrix, 5)
    for temperature in (1.0, 10.0):
        exact = (torch.softmax(scores / temperature, 0) * scores).sum()
        chain = gibbs_subsets(matrix, 5, temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert chain.mean() == pytest.approx(exact.item(), rel=0.03)


def test_jest_comes_close_to_the_joint_distribution_on_tiny_batches():
    """Every clean item is in a group of mutual hard negatives (B = 24, b = 6, tau = 1).

    The target is p(S) ~ exp(score(S)); its mean score comes from the Gibbs chain. JEST drawing one item
    per chunk gets within a few percent of it; fewer, larger chunks commit earlier and lose more, and
    independent selection, blind to the cross terms, loses most.
    """
    reference, learner, _ = planted(24, groups=2, group_size=10, noisy=4, seed=1)
    scores = pair_scores("learnability", reference, learner)
    matrix = dense_matrix(scores, F64)
    joint = gibbs_subsets(matrix, 6, generator=torch.Generator().manual_seed(0)).mean().item()
    g = torch.Generator().manual_seed(0)

    def mean_score(sampler, **kwargs):
        return (
            torch.stack(
                [
                    matrix_subset_score(matrix, sampler(scores, 6, generator=g, dtype=F64, **kwargs).indices)
                    for _ in range(300)
                ]
            )
            .mean()
            .item()
        )

    one_per_chunk = mean_score(sample_jest, chunks=6)
    two_per_chunk = mean_score(sample_jest, chunks=3)
    independent = mean_score(sample_independent)
    assert one_per_chunk == pytest.approx(joint, rel=0.05)
    assert one_per_chunk > two_per_chunk > 1.3 * independent
    assert mean_score(sample_random) < independent


# --- devices and dtypes ---------------------------------------------------------------------------


def test_half_precision_inputs_are_accumulated_in_fp32_not_in_half(models):
    # Half inputs must be upcast before any arithmetic: accumulating these sums in half is off by 2e-3
    # (fp16) to 1e-2 (bf16) relative, measured; fp32 accumulation stays within 1e-5 of the fp64 truth.
    for half_dtype in (torch.float16, torch.bfloat16):
        half = [PairEmbeddings(m.image.to(half_dtype), m.text.to(half_dtype), 10.0, -10.0) for m in models]
        exact = [PairEmbeddings(m.image.double(), m.text.double(), 10.0, -10.0) for m in half]
        chunk = torch.arange(0, 512, 7)
        got = pair_scores("learnability", *half).cross_sums(chunk)
        want = pair_scores("learnability", *exact).cross_sums(chunk, F64)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        diagonal = pair_scores("easy", half[0], None).diagonal().double()
        torch.testing.assert_close(
            diagonal, pair_scores("easy", exact[0], None).diagonal(F64), rtol=1e-5, atol=1e-6
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(models, dtype):
    moved = [
        PairEmbeddings(m.image.to("cuda", dtype), m.text.to("cuda", dtype), m.logit_scale, m.logit_bias)
        for m in models
    ]
    on_cpu = [
        PairEmbeddings(m.image.cpu().double(), m.text.cpu().double(), m.logit_scale, m.logit_bias)
        for m in moved
    ]
    chunk = torch.arange(0, 512, 9)
    got = pair_scores("learnability", *moved).cross_sums(chunk.cuda()).cpu()
    want = pair_scores("learnability", *on_cpu).cross_sums(chunk, F64)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-2)
    sel = select_batch("jest", *moved, ratio=0.8, generator=torch.Generator("cuda").manual_seed(0))
    assert sel.indices.is_cuda and sel.indices.unique().numel() == 102
    moved64 = [PairEmbeddings(m.image.double(), m.text.double(), m.logit_scale, m.logit_bias) for m in moved]
    scores = pair_scores("learnability", *moved64)
    fast = sample_jest(scores, 102, generator=torch.Generator("cuda").manual_seed(1), dtype=F64)
    slow = dense_jest(scores, 102, generator=torch.Generator("cuda").manual_seed(1), dtype=F64)
    assert torch.equal(fast.indices, slow.indices)


# --- negCLIPLoss's batch term ----------------------------------------------------------------------


def dense_negclip_lse(emb: PairEmbeddings) -> torch.Tensor:
    """The slow twin: ½ (row + column logsumexp) of the whole t X Yᵀ matrix, in float64."""
    logits = emb.logit_scale * emb.image.double() @ emb.text.double().T
    return 0.5 * (torch.logsumexp(logits, 1) + torch.logsumexp(logits, 0))


@pytest.mark.parametrize("block_elements", [7 * 50, 1 << 24])
def test_negclip_row_blocks_match_the_dense_matrix(block_elements):
    # 50 rows in blocks of 7: seven full blocks and an uneven last one of 1; or all 50 in one block.
    emb = random_pair(50, 16, seed=4, scale=100.0, bias=-10.0)  # t = 100: logits up to 100, no overflow
    got = batch_logsumexp(emb, block_elements=block_elements)
    assert got.dtype == torch.float32 and got.shape == (50,)
    torch.testing.assert_close(got.double(), dense_negclip_lse(emb), rtol=1e-5, atol=1e-4)
    logits = emb.logit_scale * emb.image.double() @ emb.text.double().T
    torch.testing.assert_close(diagonal_logits(emb).double(), logits.diagonal(), rtol=1e-5, atol=1e-4)
    # The bias is a constant on every logit: a softmax over partners does not see it.
    unbiased = PairEmbeddings(emb.image, emb.text, emb.logit_scale, 0.0)
    assert torch.equal(batch_logsumexp(unbiased, block_elements=block_elements), got)


def test_negclip_half_inputs_accumulate_in_fp32():
    emb = random_pair(40, 64, seed=5, scale=50.0, bias=0.0)
    half = PairEmbeddings(emb.image.half(), emb.text.half(), emb.logit_scale, 0.0)
    got = batch_logsumexp(half, block_elements=3 * 40)  # 13 blocks of 3 and one of 1
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dense_negclip_lse(half), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_negclip_cuda_matches_the_dense_matrix(dtype):
    emb = random_pair(300, 32, seed=6, scale=100.0, bias=-10.0)
    moved = PairEmbeddings(emb.image.to("cuda", dtype), emb.text.to("cuda", dtype), 100.0, -10.0)
    got = batch_logsumexp(moved, block_elements=64 * 300).cpu().double()  # 4 blocks of 64 and one of 44
    on_cpu = PairEmbeddings(moved.image.cpu(), moved.text.cpu(), 100.0, -10.0)
    # fp16 on CUDA folds t into the half operand (as the pair losses do): off by t x fp16 rounding.
    torch.testing.assert_close(got, dense_negclip_lse(on_cpu), rtol=1e-3, atol=5e-2)


# --- false negatives (--false-negatives mask:T) -------------------------------------------------------


def near_duplicates(n=384, dim=32, copies=4, seed=5):
    """Reference and learner pairs where groups of `copies` rows are near copies of one another, so the
    reference sees each group as one thing; the other rows are unrelated."""
    g = torch.Generator().manual_seed(seed)
    base = unit(g, n // copies, dim)
    image = F.normalize(base.repeat_interleave(copies, 0) + 0.05 * unit(g, n, dim), dim=-1)
    text = F.normalize(image + 0.3 * unit(g, n, dim), dim=-1)
    reference = PairEmbeddings(image, text, 20.0, -8.0)
    return reference, random_pair(n, dim, seed=seed + 1, scale=10.0, bias=-5.0)


def masked_twin(matrix, reference, threshold):
    """The dense masked matrix, from first principles: off-diagonal pairs whose reference image–image or
    text–text cosine (float64) exceeds the threshold set to 0."""
    images, texts = reference.image.double(), reference.text.double()
    same = (images @ images.T > threshold) | (texts @ texts.T > threshold)
    same.fill_diagonal_(False)
    return matrix.masked_fill(same, 0.0), same


@pytest.mark.parametrize("criterion", ["learnability", "easy", "hard"])
def test_masked_cross_sums_and_draws_equal_the_dense_masked_twin(criterion):
    reference, learner = near_duplicates()
    plain = pair_scores(criterion, reference, learner)
    masked = pair_scores(criterion, reference, learner, false_negatives=0.9)
    twin, same = masked_twin(dense_matrix(plain, F64), reference, 0.9)
    assert 0 < same.sum() < same.numel() // 10  # the groups, and little else, are masked
    torch.testing.assert_close(dense_matrix(masked, F64), twin, rtol=1e-12, atol=1e-12)
    chunk = torch.randperm(384, generator=torch.Generator().manual_seed(0))[:29]
    streamed = masked.cross_sums(chunk, F64, block_elements=29 * 2 * 40)  # many uneven column blocks
    outside = torch.ones(384, dtype=torch.bool)
    outside[chunk] = False
    expected = twin[:, chunk].sum(1) + twin[chunk, :].sum(0)
    torch.testing.assert_close(streamed[outside], expected[outside], rtol=1e-12, atol=1e-12)
    for seed in range(3):
        fast = sample_jest(masked, 64, chunks=8, generator=torch.Generator().manual_seed(seed))
        slow = dense_jest(masked, 64, chunks=8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(fast.indices, slow.indices)
    assert not torch.equal(twin, dense_matrix(plain, F64))  # the mask took something away


def test_batch_totals_count_the_dense_twins_masked_pairs_of_a_sub_batch():
    reference, learner = near_duplicates()
    plain = pair_scores("easy", reference, learner)
    twin, same = masked_twin(dense_matrix(plain, F64), reference, 0.9)
    for seed, size in [(0, 64), (1, 200), (2, 1)]:
        batch = torch.randperm(384, generator=torch.Generator().manual_seed(seed))[:size]
        expected = same[batch][:, batch].sum().item()
        assert (expected > 0) == (size > 1)  # some of a group's copies are drawn together
        totals = batch_totals(batch, reference, None, "easy", F64, block_rows=7, false_negatives=0.9)
        assert totals.masked.dtype == F64 and totals.masked.item() == expected  # uneven row blocks
        torch.testing.assert_close(
            totals.score.item(), twin[batch][:, batch].sum().item(), rtol=1e-12, atol=0
        )
    assert batch_totals(batch, reference, None, "easy", F64).masked is None  # no mask, nothing counted


def test_mask_at_one_is_plain_jest_index_for_index():
    reference, learner = near_duplicates()
    assert false_negatives("mask:1") is None and false_negatives("none") is None
    assert false_negatives("mask:0.95") == 0.95
    for seed in range(3):
        plain = select_batch(
            "jest", reference, learner, "learnability", 0.8, 8, generator=torch.Generator().manual_seed(seed)
        )
        masked = select_batch(
            "jest", reference, learner, "learnability", 0.8, 8, generator=torch.Generator().manual_seed(seed),
            false_negatives=false_negatives("mask:1.0"),
        )  # fmt: skip
        assert torch.equal(plain.indices, masked.indices) and torch.equal(plain.score, masked.score)


@pytest.mark.parametrize("spec", ["mask", "mask:", "mask:x", "mask:1.5", "mask:nan", "drop:0.9"])
def test_a_bad_false_negatives_spec_is_one_clear_error(spec):
    with pytest.raises(CurateError, match="--false-negatives must be none or mask:T"):
        false_negatives(spec)
