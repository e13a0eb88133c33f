"""The things that are easy to get subtly wrong in LaNMT and its teacher."""

from __future__ import annotations

import math

import pytest
import torch

from lanmt_cli.config import PAD
from lanmt_cli.model import Gaussian, LaNMT, gaussian_kl, length_weights
from lanmt_cli.search import beam_search, greedy_search
from lanmt_cli.teacher import Transformer, with_bos
from lanmt_cli.trainers.schedule import kl_budget
from tests.tiny import lanmt_config, pad, teacher_config

VOCAB = 30


@pytest.fixture
def lanmt() -> LaNMT:
    torch.manual_seed(0)
    return LaNMT(lanmt_config(VOCAB)).eval()


@pytest.fixture
def teacher() -> Transformer:
    torch.manual_seed(0)
    return Transformer(teacher_config(VOCAB)).eval()


def random_batch(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    return [torch.randint(4, VOCAB, (int(n_),), generator=g).tolist() for n_ in lengths]


# -- padding invariance ------------------------------------------------------------


def test_lanmt_outputs_do_not_change_when_batched_with_longer_sentences(lanmt):
    src, tgt = [5, 6, 7, 8], [9, 10, 11]
    others_src, others_tgt = random_batch(3, 9, 14, seed=1), random_batch(3, 9, 14, seed=2)
    alone_s, alone_t = pad([src]), pad([tgt])
    batch_s, batch_t = pad([src, *others_src]), pad([tgt, *others_tgt])
    with torch.no_grad():
        s1, s2 = lanmt.encode_source(alone_s), lanmt.encode_source(batch_s)
        p1, p2 = lanmt.prior(s1), lanmt.prior(s2)
        torch.testing.assert_close(p1.mean[0], p2.mean[0, :4], atol=1e-5, rtol=1e-5)
        q1, q2 = lanmt.posterior(s1, alone_t), lanmt.posterior(s2, batch_t)
        torch.testing.assert_close(q1.std[0], q2.std[0, :4], atol=1e-5, rtol=1e-5)
        l1 = lanmt.length_logits(s1, q1.mean)
        l2 = lanmt.length_logits(s2, q2.mean)
        torch.testing.assert_close(l1[0], l2[0], atol=1e-5, rtol=1e-5)
        lengths2 = torch.tensor([3, 12, 13, 14])
        d1 = lanmt.log_probs(s1, q1.mean, torch.tensor([3]))
        d2 = lanmt.log_probs(s2, q2.mean, lengths2)
        torch.testing.assert_close(d1[0], d2[0, :3], atol=1e-5, rtol=1e-5)
        loss1, _ = lanmt(alone_s, alone_t, kl_budget=0.0)
        assert torch.isfinite(loss1)


@pytest.mark.parametrize("chunk", [1, 5, 512])
def test_best_tokens_are_the_argmax_of_the_log_probs_within_each_length(lanmt, chunk):
    src = pad(random_batch(4, 3, 9, seed=3))
    lengths = torch.tensor([2, 7, 4, 1])
    with torch.no_grad():
        source = lanmt.encode_source(src)
        z = lanmt.prior(source).mean
        logp = lanmt.log_probs(source, z, lengths)  # (B, Ly, V)
        tokens, best = lanmt.best_tokens(source, z, lengths, chunk=chunk)
    valid = torch.arange(7)[None, :] < lengths[:, None]
    want_best, want_tokens = logp.max(-1)
    assert torch.equal(tokens[valid], want_tokens[valid])
    assert (tokens[~valid] == PAD).all() and (best[~valid] == 0).all()
    torch.testing.assert_close(best[valid], want_best[valid], atol=1e-5, rtol=1e-5)


def test_teacher_outputs_do_not_change_when_batched_with_longer_sentences(teacher):
    src, tgt = [5, 6, 7, 8], [9, 10, 11]
    batch_s = pad([src, *random_batch(3, 9, 14, seed=1)])
    batch_t = pad([tgt, *random_batch(3, 9, 14, seed=2)])
    with torch.no_grad():
        alone = teacher.score(pad([src]), pad([tgt]))
        batched = teacher.score(batch_s, batch_t)
        torch.testing.assert_close(alone[0], batched[0], atol=1e-4, rtol=1e-5)
        m1, m2 = teacher.encode(pad([src])), teacher.encode(batch_s)
        torch.testing.assert_close(m1.states[0], m2.states[0, :4], atol=1e-5, rtol=1e-5)
    beam_alone = beam_search(teacher, pad([src]), beam=3)[0][0]
    beam_batched = beam_search(teacher, batch_s, beam=3)[0][0]
    assert beam_alone.tokens == beam_batched.tokens


# -- length transformation -----------------------------------------------------------


def test_length_weights_sum_to_one_over_valid_source_positions_only():
    valid = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    w = length_weights(valid, torch.tensor([7, 4]), 7, torch.ones(1))  # (B, Ly, Lx)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
    assert torch.all(w[0, :, 5:] == 0)
    assert torch.all(w[0, :, :5] > 0)


def test_length_weights_centres_move_monotonically():
    valid = torch.ones(1, 9, dtype=torch.bool)
    for ly in (3, 9, 20):
        w = length_weights(valid, torch.tensor([ly]), ly, torch.tensor([0.7]))
        centres = (w[0] * torch.arange(9.0)).sum(-1)  # expected source position per target
        assert torch.all(centres[1:] > centres[:-1])
        assert w[0, 0].argmax() == 0


# -- KL and its budget -------------------------------------------------------------


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = Gaussian(torch.randn(2, 3, 8), torch.rand(2, 3, 8) + 0.3)
    p = Gaussian(torch.randn(2, 3, 8), torch.rand(2, 3, 8) + 0.3)
    z = q.mean + q.std * torch.randn(200_000, 2, 3, 8)

    def log_density(g: Gaussian, x):
        return (-0.5 * ((x - g.mean) / g.std) ** 2 - g.std.log() - 0.5 * math.log(2 * math.pi)).sum(
            -1
        )

    mc = (log_density(q, z) - log_density(p, z)).mean(0)  # (2, 3)
    torch.testing.assert_close(gaussian_kl(q, p), mc, atol=0.05, rtol=0.02)
    assert torch.allclose(gaussian_kl(q, q), torch.zeros(2, 3), atol=1e-6)


def test_kl_budget_schedule_holds_then_anneals_linearly_to_zero():
    total = 100
    assert [kl_budget(s, total) for s in (0, 25, 50)] == [1.0, 1.0, 1.0]
    assert kl_budget(75, total) == pytest.approx(0.5)
    assert kl_budget(100, total) == 0.0
    assert kl_budget(150, total) == 0.0
    assert kl_budget(80, total, anneal=False) == 1.0
    values = [kl_budget(s, total) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_budget_clamps_kl_from_below(lanmt):
    """Below the budget the KL term is constant: no gradient pushes q towards p."""
    lanmt.train()
    src, tgt = pad(random_batch(4, 3, 6)), pad(random_batch(4, 3, 6, seed=3))
    torch.manual_seed(1)
    _, m = lanmt(src, tgt, kl_budget=1000.0)
    torch.manual_seed(1)
    loss_big, _ = lanmt(src, tgt, kl_budget=1000.0)
    head = lanmt.prior_head.weight
    (grad_big,) = torch.autograd.grad(loss_big, head)
    torch.manual_seed(1)
    loss_zero, m0 = lanmt(src, tgt, kl_budget=0.0)
    (grad_zero,) = torch.autograd.grad(loss_zero, head)
    assert float(m["KL_budget"]) == 1000.0 and float(m0["KL_budget"]) == 0.0
    assert torch.all(grad_big == 0)  # the prior only enters through the (clamped) KL
    assert grad_zero.abs().sum() > 0
    ntok = float(m["ntokens"])
    nsrc = int((src != PAD).sum())
    # the clamped KL adds exactly budget * source tokens / target tokens to the loss
    expected = float(m["loss"]) - 1000.0 * nsrc / ntok
    assert float(m0["loss"]) - float(m0["tok_kl"]) * nsrc / ntok == pytest.approx(expected, 1e-4)


# -- gradients, metrics ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lanmt", "teacher"])
def test_gradients_reach_every_parameter(kind, lanmt, teacher):
    model = lanmt if kind == "lanmt" else teacher
    model.train()
    src, tgt = pad(random_batch(4, 3, 8)), pad(random_batch(4, 3, 8, seed=5))
    loss, metrics = model(src, tgt, **({"kl_budget": 0.0} if kind == "lanmt" else {}))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if kind == "lanmt":
        names = "len_loss len_acc loss word_acc KL_budget kl tok_kl nll"
        assert set(names.split()) <= set(metrics)


def test_forward_refuses_arguments_a_model_does_not_take(lanmt, teacher):
    """A misspelt or foreign keyword is an error, not silently ignored."""
    src, tgt = pad(random_batch(2, 3, 8)), pad(random_batch(2, 3, 8, seed=5))
    with pytest.raises(TypeError, match="kl_budjet"):
        lanmt(src, tgt, kl_budjet=0.0)
    with pytest.raises(TypeError, match="kl_budget"):
        teacher(src, tgt, kl_budget=0.0)  # the teacher has no KL term


# -- teacher: incremental decoding, search --------------------------------------------


def test_incremental_decoding_matches_full_forward(teacher):
    src = pad(random_batch(3, 4, 9))
    tgt = pad(random_batch(3, 5, 7, seed=4))
    inp, _ = with_bos(tgt)
    with torch.no_grad():
        memory = teacher.encode(src)
        full = teacher.logits(memory, inp).log_softmax(-1)  # (B, L, V)
        state = teacher.start(memory)
        for t in range(inp.size(1)):
            step = teacher.step(state, inp[:, t])
            # compare only where the prefix is real (no padding yet)
            real = (inp[:, : t + 1] != PAD).all(1) | (t == 0)
            torch.testing.assert_close(step[real], full[real, t], atol=1e-5, rtol=1e-5)


def test_beam_size_one_equals_greedy(teacher):
    src = pad(random_batch(6, 3, 10, seed=7))
    greedy = greedy_search(teacher, src, max_len_b=5)
    beam = beam_search(teacher, src, beam=1, max_len_b=5)
    assert [h[0].tokens for h in beam] == greedy


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_scores_are_the_teachers_log_probabilities(teacher, length_penalty):
    """Scores are teacher-forced log-probabilities (EOS included; an empty hypothesis is
    EOS alone); hypotheses are ranked by score / length ** length_penalty, EOS counted."""
    src = pad(random_batch(3, 3, 6, seed=8))
    hyps = beam_search(teacher, src, beam=3, max_len_b=4, length_penalty=length_penalty)
    checked = 0
    for i, sentence in enumerate(hyps):
        assert 1 <= len(sentence) <= 3
        cands = pad([h.tokens for h in sentence])  # an empty one: all PAD, scored as EOS
        scores = teacher.score(src[i : i + 1].expand(len(sentence), -1), cands)
        torch.testing.assert_close(
            scores, torch.tensor([h.score for h in sentence]), atol=1e-4, rtol=1e-4
        )
        for h in sentence:
            assert h.normalized == pytest.approx(h.score / (len(h.tokens) + 1) ** length_penalty)
        normalized = [h.normalized for h in sentence]
        assert normalized == sorted(normalized, reverse=True)
        checked += len(sentence)
    assert checked >= 6


# -- learnability ----------------------------------------------------------------


def test_tiny_models_learn_the_synthetic_task(tiny_models, tiny_task):
    """Trained for seconds, both models translate held-out sentences exactly (>= 95%)."""
    from lanmt_cli.decoders.one_shot import OneShot

    tok = tiny_models.tokenizer
    src = pad(tok.encode_src([s for s, _ in tiny_task]))
    refs = [r for _, r in tiny_task]
    teacher_out = tok.decode_tgt(greedy_search(tiny_models.teacher, src))
    lanmt_out = tok.decode_tgt([o.tokens for o in OneShot(tiny_models.lanmt).decode(src)])
    teacher_acc = sum(h == r for h, r in zip(teacher_out, refs, strict=True)) / len(refs)
    lanmt_acc = sum(h == r for h, r in zip(lanmt_out, refs, strict=True)) / len(refs)
    assert teacher_acc >= 0.95, teacher_acc
    assert lanmt_acc >= 0.95, lanmt_acc
