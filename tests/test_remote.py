"""The DVC remote configured in .dvc/config: push after a run, pull in another clone, and
`dvc repro` there has nothing to do."""

from pathlib import Path

import pytest

# End to end (a `dvc repro` or a server): `make test-fast` leaves it out; `make test` and CI
# run it.
pytestmark = pytest.mark.slow


def _default_remote(repo) -> Path:
    """Where the repository's default remote is, as `dvc remote list` resolves it."""
    default = repo.run("dvc", "remote", "default").strip()
    for line in repo.run("dvc", "remote", "list").splitlines():
        name, url = line.split()[:2]
        if name == default:
            return Path(url)
    raise AssertionError(f"the default remote {default!r} is not listed")


def test_push_then_pull_in_a_fresh_clone_leaves_nothing_to_reproduce(pipeline_repo):
    remote = _default_remote(pipeline_repo)
    # The committed default is a local directory beside the repository, so a clone beside
    # it shares it; here that is inside the test's temporary directory.
    assert remote.parent == pipeline_repo.root.parent

    pushed = pipeline_repo.run("dvc", "push")

    assert "pushed" in pushed and any(p.is_file() for p in remote.rglob("*"))
    clone = pipeline_repo.clone(pipeline_repo.root.parent / "other-clone")
    assert not (clone.root / "models" / "model.keras").exists()  # git holds no DVC data

    clone.run("dvc", "pull")
    reproduced = clone.run("dvc", "repro")

    for output in ("models/model.keras", "data/augmented/manifest.csv"):
        assert (clone.root / output).read_bytes() == (pipeline_repo.root / output).read_bytes()
    assert "Running stage" not in reproduced, reproduced
    assert "Data and pipelines are up to date" in clone.run("dvc", "status")
