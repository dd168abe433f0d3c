import numpy as np
import pytest

from florec.models.llm import LLMConfig, build_llm
from florec.models.llm.scripted import ScriptedLLM


def test_a_second_run_answers_everything_from_the_cache(tiny_cfg, tmp_path):
    cfg = tiny_cfg.with_(cache=True)
    prompts = [f"{tmp_path.name}: pick A, B or C for user {u}" for u in range(5)]
    first = build_llm(cfg)
    p1 = first.choice_distribution(prompts, 3)
    g1 = first.generate(prompts[:2], max_new_tokens=4)
    assert first.stats.llm_calls == 7 and first.stats.llm_cache_hits == 0
    second = build_llm(cfg)
    before = second.stats.copy()
    p2 = second.choice_distribution(prompts, 3)
    assert second.stats.since(before).llm_cache_hits == 5
    g2 = second.generate(prompts[:2], max_new_tokens=4)
    assert second.stats.llm_calls == 0 and second.stats.llm_cache_hits == 7
    assert second.stats.prompt_tokens == 0
    np.testing.assert_array_equal(p1, p2)
    assert g1 == g2


def test_other_parameters_or_a_new_adapter_miss_the_cache(tiny_cfg, tmp_path):
    llm = build_llm(tiny_cfg.with_(cache=True))
    prompts = [f"{tmp_path.name}: pick A or B"]
    llm.choice_distribution(prompts, 2)
    llm.choice_distribution(prompts, 3)
    llm.generate(prompts, max_new_tokens=2)
    llm.generate(prompts, max_new_tokens=3)
    assert llm.stats.llm_calls == 4
    llm.finetune_choices(prompts, [1], 2, epochs=1, lr=1e-2, lora_r=2)
    llm.choice_distribution(prompts, 2)
    assert llm.stats.llm_calls == 5 and llm.stats.llm_cache_hits == 0


def test_duplicate_prompts_are_answered_once(tiny_cfg, tmp_path):
    llm = build_llm(tiny_cfg.with_(cache=True))
    p = llm.choice_distribution([f"{tmp_path.name} same"] * 3, 2)
    assert llm.stats.llm_calls == 1 and llm.stats.llm_cache_hits == 2
    np.testing.assert_array_equal(p[0], p[2])


def test_an_interrupted_run_keeps_the_batches_it_finished(tmp_path):
    def rule(prompt, n, rng):
        if prompt == "stop":
            raise KeyboardInterrupt
        return np.ones(n)

    cfg = LLMConfig(backend="scripted", cache_dir=tmp_path, progress=False)
    llm = build_llm(cfg, scripted_rule=rule, scripted_name="stopper")
    llm.inner.batch_size = 2
    with pytest.raises(KeyboardInterrupt):
        llm.choice_distribution(["a", "b", "c", "stop"], 2)
    again = build_llm(cfg, scripted_rule=rule, scripted_name="stopper")
    again.choice_distribution(["a", "b"], 2)
    assert again.stats.llm_cache_hits == 2 and again.stats.llm_calls == 0
    assert isinstance(again.inner, ScriptedLLM)


def test_a_cached_sampled_answer_is_the_one_the_prompt_gets_alone(tiny_cfg, tmp_path):
    from florec.models.llm.cache import call_key

    cached = build_llm(tiny_cfg.with_(cache=True, batch_size=4))
    prompts = [f"{tmp_path.name}: describe user {u}" for u in range(4)]
    kw = {"max_new_tokens": 6, "temperature": 0.7, "seed": 3}
    batch = cached.generate(prompts, **kw)  # stored from one batch of four
    alone = build_llm(tiny_cfg)  # no cache: each prompt in a batch of its own
    assert [alone.generate([p], **kw)[0] for p in prompts] == batch
    assert cached.generate(prompts[2:3], **kw) == batch[2:3]
    assert cached.stats.llm_cache_hits == 1
    # sampled keys name the per-prompt sampler: an older batch-seeded answer is not replayed
    params = {"max_new_tokens": 6, "temperature": 0.7, "seed": 3, "system": None}
    old = call_key(cached.key, "generate", prompts[0], params)
    new = call_key(cached.key, "generate", prompts[0], params | {"sampling": "row-seed-v1"})
    found = cached.cache.get_many([old, new])
    assert old not in found and found[new] == batch[0]
