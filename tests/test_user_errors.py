"""One error type: every error a user can cause derives from melanoma.errors.MelanomaError, and
none reaches the user as a traceback. The CLI's documented errors (its exit codes: a file that
could not be used, bad arguments or params, a model or registry unavailable) and the stages'
are walked, each checked to end as one logged message and its exit code."""

import ast
import importlib
import logging
from pathlib import Path

import pytest
import yaml

from melanoma.cli import main
from melanoma.errors import MelanomaError
from melanoma.exit_codes import CANNOT_RUN, SOME_FILES_FAILED, STAGE_STOPPED

ROOT = Path(__file__).resolve().parent.parent
STAGES = sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def exception_classes() -> list[str]:
    """Dotted names of the package's exception classes: those with a base named ...Error or
    ...Exception, and those deriving from one of them."""
    bases_of: dict[str, set[str]] = {}
    for path in sorted((ROOT / "melanoma").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).split(".")[-1] for base in node.bases}
                bases_of[f"{module}.{node.name}"] = bases
    found = {
        name
        for name, bases in bases_of.items()
        if any(base.endswith(("Error", "Exception")) for base in bases)
    }
    while (
        more := {
            name for name, bases in bases_of.items() if bases & {f.split(".")[-1] for f in found}
        }
        - found
    ):
        found |= more
    return sorted(found)


def test_every_error_of_the_package_is_a_melanoma_error():
    not_derived = []
    for name in exception_classes():
        module, _, cls = name.rpartition(".")
        if not issubclass(getattr(importlib.import_module(module), cls), MelanomaError):
            not_derived.append(name)
    assert not not_derived, not_derived


def one_message(caplog, capsys) -> str:
    """The one error logged, checked to come without a traceback."""
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out + caplog.text
    assert len(errors) == 1, [record.getMessage() for record in errors]
    return errors[0].getMessage()


@pytest.fixture
def files(mlflow_project, image_bytes) -> None:
    """photo.jpg (an image), notes.jpg (not one), empty/ (no file) and bad.yaml (a param out
    of range) in the project directory."""
    Path("photo.jpg").write_bytes(image_bytes(1, (50, 40)))
    Path("notes.jpg").write_text("not an image")
    Path("empty").mkdir()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["epochs"] = 0
    Path("bad.yaml").write_text(yaml.safe_dump(raw))


CLI_ERRORS = {
    "params file missing": (["--params", "gone.yaml", "rollback"], CANNOT_RUN, "gone.yaml"),
    "param out of range": (["--params", "bad.yaml", "rollback"], CANNOT_RUN, "train.epochs"),
    "no image files": (["request", "empty"], SOME_FILES_FAILED, "no image files in empty"),
    "a file that is not an image": (["request", "notes.jpg"], SOME_FILES_FAILED, "notes.jpg"),
    "model missing": (
        ["predict", "photo.jpg", "--model", "gone.keras", "--threshold", "0.5"],
        CANNOT_RUN,
        "gone.keras",
    ),
    "explain folder not writable": (
        ["predict", "photo.jpg", "--explain", "photo.jpg/overlays", "--threshold", "0.5"],
        CANNOT_RUN,
        "--explain photo.jpg/overlays",
    ),
    "no champion to predict with": (
        ["predict", "photo.jpg", "--threshold", "0.5"],
        CANNOT_RUN,
        "models:/melanoma-test@champion",
    ),
    "version missing": (["promote", "7"], CANNOT_RUN, "melanoma-test has no version 7"),
    "nothing to roll back": (["rollback"], CANNOT_RUN, "melanoma-test"),
    "site name not an identifier": (
        ["site", "calibrate", "Clinic A", "empty"],
        CANNOT_RUN,
        "'Clinic A' is not a plain identifier",
    ),
    "no image files to check": (["site", "check", "empty"], CANNOT_RUN, "no image files"),
    "no champion to check with": (["site", "check", "."], CANNOT_RUN, "has no champion"),
    "page of a missing version": (["app", "--version", "7"], CANNOT_RUN, "no version 7"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_a_users_error_in_the_cli_is_one_message_and_its_exit_code(case, files, caplog, capsys):
    argv, code, named = CLI_ERRORS[case]

    assert main(argv) == code
    assert named in one_message(caplog, capsys)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("problem", ["params.yaml missing", "param out of range"])
def test_a_stage_stops_on_bad_params_with_one_message(stage, problem, files, caplog, capsys):
    if problem == "params.yaml missing":
        Path("params.yaml").unlink()
    else:
        Path("bad.yaml").replace("params.yaml")

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"stages.{stage}").main()

    assert stopped.value.code == STAGE_STOPPED
    message = one_message(caplog, capsys)
    assert ("params.yaml" if problem == "params.yaml missing" else "train.epochs") in message


def test_a_batch_larger_than_the_training_set_stops_the_train_stage_with_one_message(
    files, caplog, capsys
):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["batch_size"] = 4
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    manifest = Path("data/augmented/manifest.csv")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        "image_path,label,split,source,source_image_id,source_image_path,augmented\n"
        "a.png,melanoma,train,isic,a,a.png,False\n"
        "b.png,nevus,train,isic,b,b.png,False\n"
        "c.png,nevus,val,isic,c,c.png,False\n"
    )

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module("stages.train").main()

    assert stopped.value.code == STAGE_STOPPED
    message = one_message(caplog, capsys)
    assert "train.batch_size=4 is larger than the 2 training images" in message
