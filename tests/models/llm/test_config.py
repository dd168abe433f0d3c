import pytest

from florec.models.llm import LLMConfig
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config


def test_run_config_keys_reach_the_llm_config():
    rc = parse_run_config({"llm-backend": "openai", "llm-base-url": "http://h:1/v1",
                           "llm-model": "qwen", "llm-max-concurrency": 8, "scripted-p": 0.3,
                           "llm-cache": False, "seed": 4, "llm-batch-size": 1})
    cfg = LLMConfig.from_run_config(rc)
    assert (cfg.backend, cfg.base_url, cfg.model, cfg.max_concurrency, cfg.scripted_p,
            cfg.cache, cfg.seed, cfg.batch_size) == ("openai", "http://h:1/v1", "qwen", 8, 0.3,
                                                     False, 4, 1)


def test_a_batch_size_of_one_runs_every_prompt_alone(tiny_cfg):
    from florec.models.llm import build_llm

    llm = build_llm(LLMConfig.from_run_config(
        parse_run_config({"llm-backend": "tiny", "llm-batch-size": 1}),
        cache_dir=tiny_cfg.cache_dir, cache=False, progress=False))
    batches = []
    inner = llm._generate_batch
    llm._generate_batch = lambda prompts, **kw: batches.append(len(prompts)) or inner(prompts, **kw)
    llm.generate(["a short one", "a somewhat longer prompt", "x"], max_new_tokens=4,
                 temperature=0.7, seed=1)
    assert batches == [1, 1, 1]


def test_an_llm_batch_size_below_one_is_refused_by_the_run_config():
    with pytest.raises(ConfigError, match="llm-batch-size"):
        parse_run_config({"llm-batch-size": 0})


@pytest.mark.parametrize("kw, match", [
    ({"backend": "gpt"}, "llm-backend"),
    ({"backend": "openai"}, "llm-base-url"),
    ({"dtype": "int4"}, "llm-dtype"),
    ({"scripted_p": 2.0}, "probability"),
    ({"batch_size": 0}, "batch-size"),
])
def test_bad_llm_settings_are_one_line_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        LLMConfig(**kw)
