"""The LLKD task: an item's category from its title, gold labels kept apart for evaluation.

* ML-100K: the title (with its year) -> one of the ``n_classes`` most frequent genres; items
  with exactly one of these genres carry a gold label (MovieLens genres are multi-label).
* Amazon-Scientific: the title (category path and brand removed) -> the second-level category
  of its path (``Industrial & Scientific > <second level> > ...``), the ``n_classes`` most
  frequent ones; UniSRec's text joins the path with spaces, so the second level is matched
  against Amazon's known second-level names (:data:`AMAZON_SECOND_LEVEL`).
* ``synthetic``: ``"Item 17"`` -> its generator cluster (tests).

The gold labels never enter training: :func:`split_task` holds a seeded test share out for
accuracy and macro-F1, and the teacher / student see only ``inputs``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from florec.recdata.errors import ConfigError
from florec.recdata.item_text import ItemText
from florec.recdata.runconfig import RunConfig
from florec.recdata.seeds import Salt, stream

#: Second-level categories under Amazon's "Industrial & Scientific" (longest names first when
#: matching, so "Industrial Electrical" does not shadow a longer name).
AMAZON_SECOND_LEVEL = (
    "Abrasive & Finishing Products", "Additive Manufacturing Products",
    "Commercial Door Products", "Cutting Tools", "Fasteners", "Filtration",
    "Food Service Equipment & Supplies", "Hydraulics, Pneumatics & Plumbing",
    "Industrial Electrical", "Industrial Hardware", "Industrial Power & Hand Tools",
    "Janitorial & Sanitation Supplies", "Lab & Scientific Products",
    "Material Handling Products", "Occupational Health & Safety Products",
    "Packaging & Shipping Supplies", "Power Transmission Products",
    "Professional Dental Supplies", "Professional Medical Supplies", "Raw Materials",
    "Retail Store Fixtures & Equipment", "Robotics", "Science Education",
    "Tapes, Adhesives & Sealants", "Test, Measure & Inspect",
)
AMAZON_ROOT = "Industrial & Scientific"


@dataclass(frozen=True)
class TextTask:
    """Unlabeled item texts with their (held-apart) gold categories.

    Attributes
    ----------
    inputs : list of str
        Model input of every item (the title only), indexed by internal item id.
    gold : np.ndarray
        ``(n_items,)`` int64 gold class, ``-1`` where the item has none of the classes.
    classes : tuple of str
        Class names, most frequent first.
    noun : str
        What an item is in prompts (``"movie"`` or ``"product"``).

    """

    inputs: list[str]
    gold: np.ndarray
    classes: tuple[str, ...]
    noun: str = "item"

    @property
    def labelled(self) -> np.ndarray:
        """Internal ids of the items that carry a gold class."""
        return np.flatnonzero(self.gold >= 0)


def amazon_second_level(path: str) -> str:
    """The second-level category of a space-joined Amazon category path ("" if unknown)."""
    rest = path.strip().removeprefix(AMAZON_ROOT).strip()
    for name in sorted(AMAZON_SECOND_LEVEL, key=len, reverse=True):
        if rest.startswith(name):
            return name
    return ""


def build_task(dataset: str, texts: Sequence[ItemText], n_classes: int) -> TextTask:
    """The category task of ``dataset`` over items ``texts`` (internal order).

    Parameters
    ----------
    dataset : str
        ``ml-100k`` (genres), ``amazon-scientific`` (second-level category) or ``synthetic``.
    texts : sequence of ItemText
        :func:`florec.recdata.item_text.load_item_text` output.
    n_classes : int
        Number of classes (the most frequent ones), 2..10 (the teacher answers with a letter).

    Returns
    -------
    TextTask
        Inputs are the titles alone: the genres / category path are removed.

    """
    if not 2 <= n_classes <= 10:
        raise ConfigError(f"llkd-classes={n_classes} is out of range; choose 2..10 (one answer "
                          "letter A..J per class)")
    if dataset == "amazon-scientific":
        cats = [[amazon_second_level(t.genres[0])] if t.genres else [] for t in texts]
        noun = "product"
    elif dataset in ("ml-100k", "ml-1m"):
        cats, noun = [list(t.genres) for t in texts], "movie"
    elif dataset == "synthetic":
        cats, noun = [list(t.genres) for t in texts], "item"
    else:
        raise ConfigError(f"LLKD has no category task for dataset {dataset!r}; use ml-100k, "
                          "amazon-scientific or synthetic")
    counts = Counter(c for cs in cats for c in cs if c and c != "unknown")
    classes = tuple(c for c, _ in counts.most_common(n_classes))
    if len(classes) < 2:
        raise ConfigError(f"dataset {dataset!r} has fewer than 2 categories in its item text; "
                          "LLKD needs a labelled category per item")
    index = {c: i for i, c in enumerate(classes)}
    gold = np.full(len(texts), -1, np.int64)
    for i, cs in enumerate(cats):
        hits = {index[c] for c in cs if c in index}
        if len(hits) == 1:  # single-label items only (MovieLens genres are multi-label)
            gold[i] = hits.pop()
    return TextTask([t.title for t in texts], gold, classes, noun)


def parse_item_line(line: str) -> ItemText:
    """Invert :func:`florec.recdata.item_text.item_text_string` (what a node's shard serves).

    ``"title | Genres: a, b | Brand: x"`` -> ``ItemText("title", ["a", "b"], "x")``; an Amazon
    category path (``Categories:``) stays one string (it may hold ``", "`` itself). Fields are
    split from the right, so a title may contain ``" | "``.
    """
    brand = ""
    head, sep, tail = line.rpartition(" | Brand: ")
    if sep:
        line, brand = head, tail
    for label in ("Categories", "Genres"):
        head, sep, tail = line.rpartition(f" | {label}: ")
        if sep:
            return ItemText(head, [tail] if label == "Categories" else tail.split(", "), brand,
                            label)
    return ItemText(line, [], brand)


def split_task(task: TextTask, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the labelled items into (unlabeled training pool, gold test items).

    Both hold only items of the ``C`` classes (the paper's closed C-class setting); the pool's
    gold labels are used for the teacher gate and the report, never for training.
    """
    rng = stream(seed, Salt.LLKD_SPLIT)
    labelled = rng.permutation(task.labelled)
    n_test = int(round(test_fraction * len(labelled)))
    test = np.sort(labelled[:n_test])
    pool = np.sort(labelled[n_test:])
    return pool, test


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Count of each class among ``labels`` (``-1`` ignored)."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels >= 0], minlength=n_classes)


def load_task(cfg: RunConfig) -> TextTask:
    """The category task over the split's items (internal ids)."""
    from florec.recdata.item_text import load_item_text, split_item_ids
    from florec.recdata.store import get_split

    split, path = get_split(cfg.dataset, cfg.split, cfg.split_seed, cfg.data_dir,
                            cfg.min_rating, cfg.synthetic_params())
    ids = split_item_ids(Path(path), cfg.dataset)
    synthetic = cfg.synthetic_params() if cfg.dataset == "synthetic" else None
    texts = load_item_text(cfg.dataset, cfg.data_dir or None, ids, synthetic=synthetic)
    return build_task(cfg.dataset, texts, cfg.llkd_classes)
