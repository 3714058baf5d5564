"""The documentation: every relative link (and its #anchor) of README.md, docs/*.md and
bench/*.md resolves, no page cites an issue number, the README leads to where the reason codes,
the alert rule and the promotion rule are documented, and every ingest reason code is there."""

import re
from pathlib import Path

import pytest
import yaml

from melanoma.data import images, sources, table_sources

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md")])
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
ISSUE = re.compile(r"\bissues?\s+#?\d+|(?<![\w/&])#\d+\b", re.I)


def prose(text: str) -> str:
    """The text without fenced code blocks (headings and links in code are not headings)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(INLINE_CODE.sub("``", prose(page.read_text())))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "bench/ABLATION.md", "docs/data.md", "docs/evaluation.md"} <= names
    assert {"docs/registry-and-serving.md", "docs/team.md", "docs/benchmark.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_cites_an_issue_number(page):
    text = INLINE_CODE.sub("``", prose(page.read_text()))
    text = re.sub(r"\]\([^)]*\)", "]()", text)  # link targets (URLs) are not citations
    found = [m.group(0) for m in ISSUE.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)} cites {found}"


def test_the_readme_says_where_the_reason_codes_alert_and_promotion_rules_are():
    links = set(relative_links(ROOT / "README.md"))
    assert "docs/data.md#ingests-reason-codes" in links
    assert "docs/evaluation.md#the-melanoma-alert-how-its-threshold-is-chosen" in links
    assert "docs/registry-and-serving.md#the-promotion-rule" in links


def test_every_ingest_reason_code_is_documented():
    codes = {
        value
        for module in (images, sources, table_sources)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value)
    }
    assert {"empty_file", "outside_class_folder", "not_in_table", "missing_image"} <= codes
    text = (ROOT / "docs/data.md").read_text()
    section = text[text.index("## ingest's reason codes") :]
    section = section[: section.index("\n## ", 1)]
    missing = sorted(c for c in codes if f"| `{c}` |" not in section)
    assert not missing, f"reason codes missing from docs/data.md's table: {missing}"


def test_every_source_block_of_the_data_page_is_valid_params():
    from melanoma.params.data import DataParams

    text = (ROOT / "docs/data.md").read_text()
    blocks = re.findall(r"```yaml\n(    - name: .*?)```", text, re.S)
    names = [yaml.safe_load(block)[0]["name"] for block in blocks]
    assert {"isic2017", "bcn20000", "isic2018", "isic2020"} <= set(names)
    for block in blocks:
        DataParams.model_validate({"sources": yaml.safe_load(block)})
