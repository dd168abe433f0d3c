import pytest

from florec.models.llm import LLMConfig
from florec.recdata.errors import ConfigError
from florec.recdata.runconfig import parse_run_config


def test_run_config_keys_reach_the_llm_config():
    rc = parse_run_config({"llm-backend": "openai", "llm-base-url": "http://h:1/v1",
                           "llm-model": "qwen", "llm-max-concurrency": 8, "scripted-p": 0.3,
                           "llm-cache": False, "seed": 4})
    cfg = LLMConfig.from_run_config(rc)
    assert (cfg.backend, cfg.base_url, cfg.model, cfg.max_concurrency, cfg.scripted_p,
            cfg.cache, cfg.seed) == ("openai", "http://h:1/v1", "qwen", 8, 0.3, False, 4)


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
