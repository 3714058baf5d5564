import numpy as np
import pytest

from melanoma.sites.drift import DriftReference, DriftReferenceError, check_drift, mmd_test


def _reference(rng, n: int = 600) -> DriftReference:
    return DriftReference(melanoma=rng.beta(1, 6, n), features=rng.normal(1, 0.3, (n, 8)))


def test_batches_like_the_reference_are_rarely_flagged():
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    flagged = [
        check_drift(
            reference, rng.beta(1, 6, 100), rng.normal(1, 0.3, (100, 8)), 0.05, 200, seed
        ).drifted
        for seed in range(40)
    ]
    # alpha 0.05 over two tests: about 5% of such batches, here at most 5 of 40.
    assert sum(flagged) <= 5


def test_a_shift_of_the_scores_or_of_the_embedding_is_flagged_by_its_own_test():
    rng = np.random.default_rng(1)
    reference = _reference(rng)
    like = rng.normal(1, 0.3, (150, 8))

    scores_moved = check_drift(reference, rng.beta(2, 4, 150), like, 0.01, 200)
    assert scores_moved.drifted and scores_moved.score_p_value < 0.005
    assert scores_moved.embedding_p_value > 0.005

    other_camera = rng.normal(1, 0.3, (150, 8)) + np.array([0.8, -0.8, 0, 0, 0, 0, 0, 0])
    embedding_moved = check_drift(reference, rng.beta(1, 6, 150), other_camera, 0.01, 200)
    assert embedding_moved.drifted and embedding_moved.embedding_p_value < 0.005
    assert embedding_moved.score_p_value > 0.005
    assert "differ from the validation split" in embedding_moved.verdict("the validation split")
    assert "look like" in check_drift(reference, rng.beta(1, 6, 150), like, 0.01).verdict("it")


def test_the_permutation_p_value_is_uniform_under_no_difference():
    rng = np.random.default_rng(2)
    p_values = [
        mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(40, 4)) + 1, 100, rng)[1]
        for _ in range(3)
    ]
    assert max(p_values) < 0.05  # a shifted batch: every p small
    same = [
        mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(40, 4)), 100, rng)[1]
        for _ in range(200)
    ]
    assert np.mean(np.array(same) < 0.1) == pytest.approx(0.1, abs=0.06)


def test_a_saved_reference_reads_back_and_a_bad_file_is_named(tmp_path):
    reference = _reference(np.random.default_rng(3), 20)
    reference.save(tmp_path / "drift_reference.npz")
    loaded = DriftReference.load(tmp_path / "drift_reference.npz")
    np.testing.assert_array_equal(loaded.melanoma, reference.melanoma)
    np.testing.assert_allclose(loaded.features, reference.features, atol=1e-6)
    (tmp_path / "bad.npz").write_text("no")
    with pytest.raises(DriftReferenceError, match="bad.npz: not a drift reference file"):
        DriftReference.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="at least 2"):
        check_drift(reference, np.array([0.5]), np.ones((1, 8)), 0.01)
