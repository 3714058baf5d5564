import pandas as pd

from melanoma.data.groups import image_groups, near_duplicate_pairs


def images(*rows: tuple[str, str, str, str, str]) -> pd.DataFrame:
    """(source, source_path, image_id, pixel_sha256, lesion_id) per accepted image."""
    columns = ["source", "source_path", "image_id", "pixel_sha256", "lesion_id"]
    return pd.DataFrame(rows, columns=columns, index=[f"r{i}" for i in range(len(rows))])


def test_near_duplicate_pairs_are_within_the_distance_once_each():
    hashes = pd.Series(
        ["0000000000000000", "0000000000000003", "ffffffffffffffff", "0000000000000001"],
        index=["a", "b", "c", "d"],
    )
    pairs = near_duplicate_pairs(hashes, max_distance=1)
    assert pairs.to_dict("records") == [
        {"first": "a", "second": "d", "distance": 1},
        {"first": "b", "second": "d", "distance": 1},
    ]
    assert len(near_duplicate_pairs(hashes, max_distance=0)) == 0
    assert len(near_duplicate_pairs(hashes, max_distance=64)) == 6


def test_pixels_ids_lesions_and_near_pairs_link_images_into_groups_transitively():
    table = images(
        ("isic", "Train/mel/ISIC_0000001.jpg", "ISIC_0000001", "p1", ""),
        # the same ISIC id in another source, other pixels: linked by id
        ("ham", "images/ISIC_0000001.jpg", "ISIC_0000001", "p2", "HAM_1"),
        # the same lesion, another photograph: linked by lesion, so to the first image too
        ("ham", "images/ISIC_0000002.jpg", "ISIC_0000002", "p3", "HAM_1"),
        # same lesion id in another source means nothing: ids are a source's own
        ("other", "x/ISIC_0000003.jpg", "ISIC_0000003", "p4", "HAM_1"),
        # same pixels under another name
        ("isic", "Train/nv/copy.jpg", "copy", "p4", ""),
        # a near-duplicate pair, given
        ("isic", "Train/nv/a.jpg", "a", "p5", ""),
        ("ham", "images/b.jpg", "b", "p6", ""),
        # alone
        ("isic", "Train/nv/alone.jpg", "alone", "p7", ""),
    )
    near = pd.DataFrame({"first": ["r5"], "second": ["r6"], "distance": [0]})
    groups = image_groups(table, near)
    assert groups["r0"] == groups["r1"] == groups["r2"]
    assert groups["r3"] == groups["r4"] != groups["r0"]
    assert groups["r5"] == groups["r6"]
    assert groups.nunique() == 4
    assert groups.str.fullmatch(r"[0-9a-f]{12}").all()
    # Names do not depend on the order of the rows.
    shuffled = table.iloc[::-1]
    assert image_groups(shuffled, near).sort_index().equals(groups.sort_index())
