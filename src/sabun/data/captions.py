"""Caption handling as pure functions on strings: tags, shuffling with kept leading tags, counts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """`"1girl, red hair,  solo"` -> `["1girl", "red hair", "solo"]` (empty tags dropped)."""
    return [tag.strip() for tag in caption.split(separator) if tag.strip()]


def join_tags(tags: list[str], separator: str = ",") -> str:
    return (separator + " ").join(tags) if separator == "," else separator.join(tags)


def shuffle_caption(caption: str, keep_tokens: int, separator: str, rng: random.Random) -> str:
    """Shuffle the tags after the first `keep_tokens`, as sd-scripts' `--shuffle_caption`.

    Shuffling stops the model from tying a concept to a tag's position; the kept leading tags
    (a trigger word, `1girl`) stay first because they are what a prompt will start with.
    """
    tags = split_tags(caption, separator)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(rest)
    return join_tags(kept + rest, separator)


def tag_frequency(captions: Iterable[str], separator: str = ",") -> dict[str, int]:
    """How many captions hold each tag (sd-scripts' `ss_tag_frequency` for one folder)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(set(split_tags(caption, separator)))
    return dict(counts.most_common())
