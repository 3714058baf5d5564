"""Images that are not dermoscopic lesions, for measuring the unfamiliar-image warning.

What a clinic's pipeline gets by mistake: charts and screenshots, blank and solid-colour frames,
noise, and ordinary photographs. Made here, deterministically (nothing is downloaded): solid
colours, noise, gradients and stripes drawn with numpy, charts drawn with matplotlib, text
"screenshots" drawn with Pillow, the photographs and logos matplotlib ships as sample data, and
the project's own plots.
"""

import io
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

SIDE = 400
SAMPLE_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def _solid_colours() -> dict[str, np.ndarray]:
    colours = {
        "black": (0, 0, 0),
        "white": (255, 255, 255),
        "grey": (128, 128, 128),
        "red": (220, 30, 30),
        "green": (30, 180, 60),
        "blue": (30, 60, 220),
        "skin": (224, 172, 138),
        "brown": (120, 72, 40),
    }
    return {f"solid_{n}": np.full((SIDE, SIDE, 3), c, np.uint8) for n, c in colours.items()}


def _patterns(rng: np.random.Generator) -> dict[str, np.ndarray]:
    ramp = np.linspace(0, 255, SIDE)
    horizontal = np.repeat(np.tile(ramp, (SIDE, 1))[..., None], 3, axis=2)
    stripes = np.repeat(((np.arange(SIDE) // 20) % 2 * 255)[None, :, None], SIDE, axis=0)
    checker = ((np.add.outer(np.arange(SIDE) // 40, np.arange(SIDE) // 40)) % 2 * 255)[..., None]
    return {
        "noise_uniform": rng.integers(0, 256, (SIDE, SIDE, 3)),
        "noise_gaussian": np.clip(rng.normal(128, 40, (SIDE, SIDE, 3)), 0, 255),
        "noise_grey": np.repeat(rng.integers(0, 256, (SIDE, SIDE, 1)), 3, axis=2),
        "noise_salt_pepper": (rng.random((SIDE, SIDE, 1)) > 0.5) * np.full(3, 255),
        "gradient_grey": horizontal,
        "gradient_colour": np.stack(
            [horizontal[..., 0], horizontal[..., 0].T, 255 - ramp[None, :] * np.ones((SIDE, 1))],
            axis=2,
        ),
        "stripes": np.repeat(stripes, 3, axis=2),
        "checkerboard": np.repeat(checker, 3, axis=2),
    }


def _charts(rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = np.linspace(0, 10, 100)
    drawings = {
        "chart_line": lambda ax: ax.plot(x, np.sin(x), x, np.cos(x)),
        "chart_bar": lambda ax: ax.bar(list("abcdef"), rng.random(6)),
        "chart_scatter": lambda ax: ax.scatter(rng.random(200), rng.random(200), c=rng.random(200)),
        "chart_histogram": lambda ax: ax.hist(rng.normal(size=1000), bins=30),
        "chart_pie": lambda ax: ax.pie(rng.random(5) + 0.2),
        "chart_heatmap": lambda ax: ax.imshow(rng.random((12, 12)), cmap="viridis"),
    }
    charts = {}
    for name, draw in drawings.items():
        figure, ax = plt.subplots(figsize=(4, 4), dpi=100)
        draw(ax)
        ax.set_title(name)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        charts[name] = np.asarray(Image.open(buffer).convert("RGB"))
    return charts


def _screenshots() -> dict[str, np.ndarray]:
    shots = {}
    for name, background, ink in (
        ("screenshot_light", "white", "black"),
        ("screenshot_dark", (30, 30, 30), (200, 200, 200)),
        ("screenshot_terminal", "black", (0, 220, 0)),
    ):
        image = Image.new("RGB", (SIDE, SIDE), background)
        draw = ImageDraw.Draw(image)
        for line in range(20):
            draw.text((10, 10 + 19 * line), f"{line:02d}  def predict(files): return model(x)", ink)
        shots[name] = np.asarray(image)
    return shots


def write_non_lesion_images(folder: Path, project_plots: Path | None = None) -> list[Path]:
    """Write the non-lesion images into `folder` (PNG; sample photographs as shipped) and
    return their paths. `project_plots`: a folder of the project's own plots to add."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    drawn = _solid_colours() | _patterns(rng) | _charts(rng) | _screenshots()
    written = []
    for name, pixels in drawn.items():
        path = folder / f"{name}.png"
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
        written.append(path)
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name in SAMPLE_PHOTOS:
        if (sample_data / name).exists():
            target = folder / f"photo_{name}"
            target.write_bytes((sample_data / name).read_bytes())
            written.append(target)
    if project_plots is not None:
        for plot in sorted(project_plots.glob("*.png")):
            target = folder / f"plot_{plot.name}"
            target.write_bytes(plot.read_bytes())
            written.append(target)
    return written
