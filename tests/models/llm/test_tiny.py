import numpy as np
import pytest

from florec.models.llm import build_llm

PROMPTS = [
    "The user watched Toy Story (1995). Which movie next? A) Heat B) Babe C) Fargo. "
    "Answer with one letter.",
    "Pick one: A) x B) y C) z",
    "A much longer prompt " * 20 + "A) one B) two C) three",
]


def test_choice_distribution_rows_are_distributions(tiny_cfg):
    llm = build_llm(tiny_cfg)
    p = llm.choice_distribution(PROMPTS, 3)
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert (p > 0).all()
    assert llm.stats.llm_calls == 3 and llm.stats.prompt_tokens > 0


def test_a_prompt_scores_the_same_alone_and_in_a_padded_batch(tiny_cfg):
    llm = build_llm(tiny_cfg.with_(batch_size=8))
    together = llm.choice_distribution(PROMPTS, 3)
    alone = np.concatenate([llm.choice_distribution([p], 3) for p in PROMPTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_out_of_range_choices_are_refused(tiny_cfg):
    llm = build_llm(tiny_cfg)
    with pytest.raises(ValueError, match="n_choices"):
        llm.choice_distribution(PROMPTS, 11)


def test_generate_is_greedy_deterministic_and_counts_tokens(tiny_cfg):
    llm = build_llm(tiny_cfg)
    first = llm.generate(PROMPTS, max_new_tokens=6)
    again = build_llm(tiny_cfg).generate(PROMPTS, max_new_tokens=6)
    assert first == again and len(first) == 3
    assert all(isinstance(t, str) for t in first)
    assert 0 < llm.stats.completion_tokens <= 3 * 6


def test_seeded_sampling_repeats_with_the_seed(tiny_cfg):
    llm = build_llm(tiny_cfg)
    a = llm.generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    b = llm.generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_lora_raises_the_target_letters_probability(tiny_cfg):
    llm = build_llm(tiny_cfg)
    targets = [i % 3 for i in range(8)]
    prompts = [f"Say {'ABC'[t]}, case {i}." for i, t in enumerate(targets)]
    before = llm.choice_distribution(prompts, 3)[np.arange(8), targets]
    key = llm.key
    stats = llm.finetune_choices(prompts, targets, 3, epochs=15, lr=2e-2, lora_r=4,
                                 batch_size=4, seed=0)
    after = llm.choice_distribution(prompts, 3)[np.arange(8), targets]
    assert stats["loss_last_epoch"] < stats["loss_first_epoch"]
    assert after.mean() > before.mean() + 0.1
    assert llm.key != key and ":lora-" in llm.key


def test_adapter_state_round_trips_into_a_fresh_model(tiny_cfg, tmp_path):
    trained = build_llm(tiny_cfg)
    assert trained.adapter_state() == {}
    prompts = ["pick A or B", "pick B or A"]
    trained.finetune_choices(prompts, [0, 1], 2, epochs=3, lr=1e-2, lora_r=2)
    state = trained.adapter_state()
    assert state and all(v.dtype == np.float32 for v in state.values())
    fresh = build_llm(tiny_cfg)
    fresh.load_adapter_state(state)
    np.testing.assert_allclose(fresh.choice_distribution(prompts, 2),
                               trained.choice_distribution(prompts, 2), atol=1e-6)
    assert fresh.key == trained.key
    trained.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_a_mismatched_adapter_state_is_refused(tiny_cfg):
    llm = build_llm(tiny_cfg)
    llm.finetune_choices(["pick A or B"], [0], 2, epochs=1, lora_r=2)
    state = {k: v[:1] for k, v in llm.adapter_state().items()}
    with pytest.raises(ValueError, match="does not match"):
        llm.load_adapter_state(state)


def test_a_shared_prompt_prefix_runs_once_and_leaves_the_answers_unchanged(tiny_cfg):
    from florec.models.cotrec.prompts import SYSTEM, item_prompt

    prompts = [item_prompt(f"Film {i} ({1990 + i}) | Genres: " + "Drama, " * (i % 3))
               for i in range(6)]
    shared = build_llm(tiny_cfg)
    texts = [shared.chat_text(p, SYSTEM) for p in prompts]
    batch, prefix = shared.shared_prefix_inputs(texts)
    assert prefix >= 100  # template, instruction and example: computed once per batch
    mask = batch["attention_mask"]
    assert mask[:, :prefix].all() and mask.sum(1).tolist() == [
        len(shared.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    plain = build_llm(tiny_cfg)
    plain.min_shared_prefix = 10**9  # never share: the plain left-padded batch
    assert plain.shared_prefix_inputs(texts)[1] == 0
    for kw in ({"temperature": 1.0, "seed": 5}, {}):  # sampled (varied tokens) and greedy
        a = shared.generate(prompts, max_new_tokens=10, system=SYSTEM, **kw)
        b = plain.generate(prompts, max_new_tokens=10, system=SYSTEM, **kw)
        assert a == b
    assert any(shared.generate(prompts, max_new_tokens=10, system=SYSTEM, temperature=1.0,
                               seed=5))  # the sampled answers are not all empty
    assert shared.stats.prompt_tokens == 3 * int(mask.sum())  # real tokens, not padding
    assert plain.stats.prompt_tokens == 2 * int(mask.sum())


def test_a_sampled_prompt_gets_the_same_text_in_any_batch(tiny_cfg):
    llm = build_llm(tiny_cfg.with_(batch_size=8))
    kw = {"max_new_tokens": 8, "temperature": 0.7, "seed": 11}
    mates = [f"Other prompt number {i}, " + "filler " * i for i in range(3)]
    alone = llm.generate([PROMPTS[0]], **kw)[0]
    first = llm.generate([PROMPTS[0], mates[0]], **kw)[0]
    second = llm.generate([*mates, PROMPTS[0], PROMPTS[2]], **kw)
    assert alone and alone == first == second[3]
    assert len(set(second)) == len(second)  # every prompt draws its own tokens
    assert llm.generate([PROMPTS[0]], **kw | {"seed": 12})[0] != alone  # the seed matters


def test_row_sampler_draws_from_the_tempered_softmax():
    import torch

    from florec.models.llm.sampling import RowSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    out = RowSampler(range(4000), temperature=0.5)(torch.zeros(4000, 1), logits)
    assert torch.isinf(out).sum(1).eq(3).all()  # one finite token per row
    freq = torch.bincount(out.argmax(1), minlength=4).double() / 4000
    expected = torch.softmax(logits[0].double() / 0.5, 0)
    np.testing.assert_allclose(freq.numpy(), expected.numpy(), atol=0.03)
    with pytest.raises(ValueError, match="temperature"):
        RowSampler([0], temperature=0.0)
