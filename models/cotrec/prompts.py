"""CoT-Rec prompts (versioned): item perception, user perception and the letter-choice ranker.

Written for FloRec after reading the authors' notebooks and LlamaRec scripts (cotrec.md §2); the
wording is ours. Every prompt is a user message: the LLM layer applies the chat template.
``PROMPT_VERSION`` is saved with every perception file and enters every call's cache key through
the prompt text, so editing a prompt never silently reuses old answers.

Placement in a federation (docs/methods/cotrec.md): :func:`item_prompt` reads public item text
only and may run on the server; :func:`user_prompt` and :func:`ranker_prompt` hold a user's
history and are built and answered on that user's node.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_VERSION = "cotrec-v1"
LETTERS = "ABCDEFGHIJ"
SYSTEM = "You are a helpful assistant."

_ITEM = """Based on the item's title and your general knowledge, infer its key characteristics: \
its type, what it offers, and its target audience. Answer in three short lines.
Example:
Item: Toy Story (1995) | Genres: Animation, Children's, Comedy
Type: Animated family film
Offers: A buddy adventure of toys that come alive, with humour for children and adults.
Audience: Families, children, fans of animation.
Now analyse this item:
Item: {item}
"""

_USER = """Here are the items a user interacted with, in chronological order. Summarise the \
user's preferences as a few concise keywords separated by commas, without any explanation.
Example output: Science Fiction, 1990s Comedies, Strong Female Leads
History:
{history}
"""

_RANKER = """### Instruction
Given the user's preferences and history in chronological order, recommend one item from the \
candidate pool. Only output its index letter (one of {first}-{last}).

### Input
**User preferences:** {preference}
**User history:**
{history}
**Candidate pool:**
{candidates}

### Response
"""


def item_prompt(item_text: str) -> str:
    """The general item-perception prompt (cotrec.md §2, phase 1a) for one item's public text."""
    return _ITEM.format(item=item_text.strip())


def user_prompt(history: Sequence[str]) -> str:
    """The user-preference prompt (phase 1b) over the user's last train items, oldest first.

    Raises
    ------
    ValueError
        If the history is empty (a user without train items has no preference to extract).

    """
    if not history:
        raise ValueError("user prompt needs at least one history item; skip users without train "
                         "items")
    return _USER.format(history="\n".join(h.strip() for h in history))


def ranker_prompt(preference: str, history: Sequence[str], candidates: Sequence[str]) -> str:
    """The LlamaRec-style letter-choice prompt: candidates labelled A.. in the given order.

    Raises
    ------
    ValueError
        If there are no candidates or more than ``len(LETTERS)``.

    """
    if not 1 <= len(candidates) <= len(LETTERS):
        raise ValueError(f"{len(candidates)} candidates; the ranker takes 1..{len(LETTERS)}")
    pool = "\n".join(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(candidates))
    return _RANKER.format(first=LETTERS[0], last=LETTERS[len(candidates) - 1],
                          preference=preference.strip() or "unknown",
                          history="\n".join(h.strip() for h in history) or "(none)",
                          candidates=pool)


def clean_response(text: str, max_chars: int = 400) -> str:
    """A generated answer as one line (whitespace collapsed), cut to ``max_chars``."""
    return " ".join(text.split())[:max_chars]
