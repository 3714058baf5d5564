"""Which images must stay on one side of every split: copies of one picture and photographs of
one lesion, across all data sources.

Two accepted images are linked when they
- have the same pixels (`pixel_sha256`),
- carry the same ISIC id (the same image in two sources, at different sizes),
- show the same lesion by their source's lesion id (HAM10000's `lesion_id`), or
- are near-duplicates: perceptual hashes within `validate.near_duplicate_distance` bits
  (a resized or re-encoded copy; a lesion photographed twice under different ids).
A group is a connected set of links (scipy's connected components), so a lesion photographed
three times, one of them also in another source, is one group.
"""

import hashlib

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from melanoma.data.reference_labels import isic_id

GROUP_ID_LENGTH = 12  # hex digits naming a group in the manifest
# Rows compared at once when searching near-duplicates: 1,024 x 12k hashes is 100 MB of xor.
_CHUNK = 1024


def hash_bits(perceptual_hashes: pd.Series) -> np.ndarray:
    """The 64-bit pHashes (16 hex digits each) as unsigned integers."""
    return np.array([int(h, 16) for h in perceptual_hashes], dtype=np.uint64)


def near_duplicate_pairs(perceptual_hashes: pd.Series, max_distance: int) -> pd.DataFrame:
    """Every pair of rows whose pHashes differ in at most `max_distance` bits.

    Returns columns `first`, `second` (index labels of the series, first before second in its
    order) and `distance` (bits).
    """
    bits = hash_bits(perceptual_hashes)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(bits), _CHUNK):
        block = bits[start : start + _CHUNK]
        distance = np.bitwise_count(block[:, None] ^ bits[None, :])
        rows, columns = np.nonzero(distance <= max_distance)
        rows = rows + start
        later = columns > rows  # each pair once, never an image with itself
        firsts.append(rows[later])
        seconds.append(columns[later])
        distances.append(distance[rows[later] - start, columns[later]])
    index = perceptual_hashes.index
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    return pd.DataFrame(
        {
            "first": index[first],
            "second": index[second],
            "distance": np.concatenate(distances).astype(int),
        }
    )


def image_groups(images: pd.DataFrame, near_pairs: pd.DataFrame) -> pd.Series:
    """The group id of every row of `images` (accepted images: source, source_path, image_id,
    pixel_sha256, lesion_id), linked as the module says; near_pairs from near_duplicate_pairs.

    A group id is the first 12 hex digits of a hash of its first member's source and path, so
    it does not depend on row order.
    """
    position = pd.Series(np.arange(len(images)), index=images.index)
    keys = {
        "pixels": images["pixel_sha256"],
        "isic_id": images["image_id"].map(isic_id),
        "lesion": (images["source"] + "/" + images["lesion_id"]).where(images["lesion_id"] != ""),
    }
    edges = [(position[near_pairs["first"]].to_numpy(), position[near_pairs["second"]].to_numpy())]
    for values in keys.values():
        shared = values.dropna()
        # Link each image to the first of its key: a star per key is as connected as a clique.
        first = (
            pd.Series(shared.index, index=shared.index)
            .groupby(shared.to_numpy())
            .transform("first")
        )
        edges.append((position[shared.index].to_numpy(), position[first.to_numpy()].to_numpy()))
    rows = np.concatenate([a for a, _ in edges]).astype(np.int64)
    columns = np.concatenate([b for _, b in edges]).astype(np.int64)
    graph = coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(images),) * 2)
    _, component = connected_components(graph, directed=False)
    member_key = (images["source"] + "/" + images["source_path"]).to_numpy()
    names: dict[int, str] = {}
    for c, key in sorted(zip(component, member_key, strict=True), key=lambda pair: pair[1]):
        names.setdefault(c, hashlib.sha256(key.encode()).hexdigest()[:GROUP_ID_LENGTH])
    return pd.Series([names[c] for c in component], index=images.index)
