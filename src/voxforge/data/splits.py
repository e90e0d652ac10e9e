"""Which assets train and which are held out: one rule for every stage and command.

The first `eval_assets` ids in sorted order are held out. Ids are content hashes, so this is
a fixed pseudo-random split that every stage derives the same way from whatever it reads
(prepared assets, encoded latents): the structure flow holds out the assets the VAE never
trained on, and the demo evaluates generation on assets no model saw.
"""

from __future__ import annotations

from collections.abc import Sequence

from voxforge.data.dataset import PreparedDataset
from voxforge.errors import ConfigError, UserError

__all__ = ["heldout_split", "open_prepared", "split_ids"]


def split_ids(ids: Sequence[str], eval_assets: int) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids): the first `eval_assets` of the sorted ids are held out."""
    ordered = sorted(ids)
    return ordered[eval_assets:], ordered[:eval_assets]


def heldout_split(
    ids: Sequence[str], eval_assets: int, *, where: str, items: str, remedy: str
) -> tuple[list[str], list[str]]:
    """`split_ids`, refusing a split that leaves nothing to train on: the message reads
    "{where}: {n} {items}, all held out for evaluation (data.eval_assets=...); {remedy}"."""
    train_ids, eval_ids = split_ids(ids, eval_assets)
    if not train_ids:
        raise UserError(
            f"{where}: {len(ids)} {items}, all held out for evaluation (data.eval_assets={eval_assets}); {remedy}"
        )
    return train_ids, eval_ids


def open_prepared(path: str, key: str = "data.path") -> PreparedDataset:
    """The prepared dataset a recipe key names; the key must be set."""
    if not path:
        raise ConfigError(f"key '{key}': set it to a folder written by `voxforge data prepare`")
    return PreparedDataset(path)
