import numpy as np
import pytest

from florec.models.llm import LLMConfig, build_llm, pick_target_rule


def _answer_of(prompt: str) -> int:
    return int(prompt.rsplit("=", 1)[1])


@pytest.mark.parametrize("p", [0.0, 0.5, 0.8, 1.0])
def test_the_scripted_backend_picks_the_true_letter_with_probability_p(p):
    n = 4000
    llm = build_llm(LLMConfig(backend="scripted", cache=False, progress=False),
                    scripted_rule=pick_target_rule(_answer_of, p))
    truth = np.arange(n) % 10
    dist = llm.choice_distribution([f"user {i} true={t}" for i, t in enumerate(truth)], 10)
    hit = float((dist.argmax(1) == truth).mean())
    # binomial standard deviation sqrt(p(1-p)/n) <= 0.008: allow 4 of them
    assert abs(hit - p) < 0.032
    np.testing.assert_allclose(dist.sum(1), 1.0)


def test_scripted_answers_depend_on_the_prompt_only():
    cfg = LLMConfig(backend="scripted", cache=False, progress=False, seed=1)
    rule = pick_target_rule(_answer_of, 0.5)
    prompts = [f"u{i} true={i % 5}" for i in range(50)]
    whole = build_llm(cfg, scripted_rule=rule).choice_distribution(prompts, 5)
    backwards = build_llm(cfg, scripted_rule=rule).choice_distribution(prompts[::-1], 5)[::-1]
    np.testing.assert_array_equal(whole, backwards)


def test_the_scripted_backend_cannot_be_fine_tuned_and_generates_by_its_rule():
    llm = build_llm(LLMConfig(backend="scripted", cache=False, progress=False),
                    scripted_text=lambda prompt: prompt.upper())
    assert llm.generate(["abc", "d"]) == ["ABC", "D"]
    with pytest.raises(NotImplementedError, match="no weights"):
        llm.finetune_choices(["a"], [0], 2)


def test_a_probability_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="not a probability"):
        pick_target_rule(_answer_of, 1.5)
