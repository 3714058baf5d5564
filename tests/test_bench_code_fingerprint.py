"""bench/code_fingerprint.py: a benchmark row keyed on the training code survives a move of a
definition between the keyed modules, and is measured again when a statement changes."""

import textwrap
from pathlib import Path

from bench.code_fingerprint import code_fingerprint

TRAINING = '''
    """Training."""

    import logging

    import numpy as np

    from pkg.fitting import fit

    log = logging.getLogger(__name__)
    RATE = 0.1


    def train(x):
        """Train on x."""
        return fit(np.asarray(x), RATE)  # the rate is the param's
'''
FITTING = '''
    """Fitting."""

    import logging

    log = logging.getLogger(__name__)


    def fit(x, rate):
        return x * rate
'''


def _write(root: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return paths


def _fingerprint(root: Path, files: dict[str, str]) -> str:
    return code_fingerprint(_write(root, files), root)


def test_a_definition_moved_between_the_files_keeps_the_fingerprint(tmp_path):
    split = _fingerprint(tmp_path / "a", {"training.py": TRAINING, "fitting.py": FITTING})
    # fit moved into training.py, with other comments, docstrings and layout.
    together = TRAINING.replace("    from pkg.fitting import fit\n", "").replace(
        '"""Train on x."""', '"""Train on x, a batch."""'
    ) + textwrap.indent("\n\ndef fit(x, rate):  # moved here\n\n    return x*rate\n", "    ")
    merged = _fingerprint(tmp_path / "b", {"training.py": together, "fitting.py": '"""Empty."""'})

    assert merged == split


def test_a_changed_statement_or_outside_import_changes_the_fingerprint(tmp_path):
    files = {"training.py": TRAINING, "fitting.py": FITTING}
    base = _fingerprint(tmp_path / "base", files)
    changes = [
        {"fitting.py": FITTING.replace("x * rate", "x * rate * 2")},
        {"training.py": TRAINING.replace("RATE = 0.1", "RATE = 0.2")},
        {"training.py": TRAINING.replace("import numpy as np", "import jax.numpy as np")},
    ]
    for index, change in enumerate(changes):
        assert _fingerprint(tmp_path / str(index), files | change) != base, change
