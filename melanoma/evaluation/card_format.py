"""How the model card writes figures and tables: every number of the card goes through
`number` or `with_interval`, so a test can hold each cell against the JSON it came from."""

from melanoma.reports import SetSection


def number(value: object, digits: int = 3) -> str:
    """The one way the card writes a figure: `digits` decimals, ints as they are, None as
    "undefined"."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)  # a field of another shape (a newer validate): shown as it is
    return f"{value:.{digits}f}"


def with_interval(section: SetSection, name: str) -> str:
    """`0.530 (0.440–0.640)`: the metric and its bootstrap interval, if the report has one."""
    value, interval = getattr(section, name), section.interval(name)
    if interval is None:
        return number(value)
    low, high = interval
    return f"{number(value)} ({number(low)}–{number(high)})"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule and one line per row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
