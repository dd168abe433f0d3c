import pytest

from florec.models.llm import LETTERS, build_llm


def test_letters_follow_smollm2s_chat_template_as_single_tokens_without_space(tiny_cfg):
    llm = build_llm(tiny_cfg)
    text = llm.chat_text("Which one?")
    assert text.endswith("<|im_start|>assistant\n")
    ids = llm.letter_ids()
    assert len(set(ids)) == len(LETTERS)
    assert llm.tokenizer.convert_ids_to_tokens(ids) == list(LETTERS)  # no leading "Ġ"
    for letter, token in zip(LETTERS, ids, strict=True):
        full = llm.tokenizer(text + letter, add_special_tokens=False)["input_ids"]
        assert full[-1] == token


def test_a_system_message_keeps_the_letter_tokens(tiny_cfg):
    llm = build_llm(tiny_cfg)
    assert llm.letter_ids("You rank movies.") == llm.letter_ids()
    assert "You rank movies." in llm.chat_text("x", "You rank movies.")


def test_a_letter_that_is_not_one_token_is_an_error(tiny_cfg):
    llm = build_llm(tiny_cfg)
    llm.letters = "AB\u0416\u0419"  # Cyrillic capitals: two byte-level tokens each
    with pytest.raises(ValueError, match="not a single token"):
        llm.choice_distribution(["pick one"], 3)
