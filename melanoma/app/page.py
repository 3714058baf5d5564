"""The clinic page: a Streamlit script, started by `melanoma app` (melanoma.app.launch).

Streamlit runs this script again on every interaction; the version is loaded once per server
(`st.cache_resource`) and the answers once per set of uploads (`st.cache_data`), so choosing
another site only re-applies a threshold. Everything it shows is computed by
melanoma.app.answers, which the tests call directly.

Arguments (after Streamlit's own, behind `--`): --params FILE, --version N, --site NAME.
"""

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from melanoma.app.answers import (
    ImageAnswer,
    ServedVersion,
    Threshold,
    Upload,
    answer_uploads,
    at_threshold,
    batch_table,
    drift_verdict,
    load_version,
    table_csv,
    threshold_for,
    verdict,
)
from melanoma.config import Params, load_params
from melanoma.labels import MELANOMA
from melanoma.sites.head import SiteHeadError

GLOBAL_CHOICE = "(none: the model's global threshold)"
NOTICE = (
    "**Decision support, not a diagnosis.** The model flags images for a clinician to look at; "
    "it does not replace examination, dermoscopy by a trained eye or histology."
)
CAPTURE_GUIDANCE = (
    "For a meaningful answer: a **dermoscopic** image, the lesion **centred** and **whole** in "
    "the frame, **in focus**, no ruler or hair across it where avoidable. Other photographs, "
    "charts or screenshots are marked UNFAMILIAR."
)


def page_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="melanoma app page")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--version")
    parser.add_argument("--site")
    return parser.parse_args(argv)


@st.cache_resource(show_spinner="Loading the model from the registry...")
def served_version(params_file: str, version: str | None) -> ServedVersion:
    return load_version(load_params(Path(params_file)), version)


@st.cache_data(show_spinner="Answering...", max_entries=4)
def answers_of(
    _served: ServedVersion,
    version: str,
    params_file: str,
    files: tuple[tuple[str, bytes], ...],
    explain: bool,
) -> list[ImageAnswer]:
    # `_served` is not hashed (a Keras model): `version` and the files are the cache key.
    params = load_params(Path(params_file))
    return answer_uploads(_served, [Upload(n, d) for n, d in files], params, explain)


def main() -> None:
    args = page_arguments(sys.argv[1:])
    st.set_page_config(page_title="Melanoma decision support", layout="wide")
    params = load_params(args.params)
    served = served_version(str(args.params), args.version)
    st.title("Melanoma decision support")
    st.warning(NOTICE)
    st.info(CAPTURE_GUIDANCE)
    threshold, explain = sidebar(served, args.site)
    uploads = st.file_uploader(
        "Lesion images (one or many; drag and drop)",
        accept_multiple_files=True,
        max_upload_size=math.ceil(params.serve.max_image_bytes / 2**20),
    )
    if not uploads:
        return
    files = tuple((upload.name, upload.getvalue()) for upload in uploads)
    answers = at_threshold(
        answers_of(served, served.version, str(args.params), files, explain), threshold
    )
    if len(answers) > 1:
        batch_view(served, answers, threshold, params)
    for position, answer in enumerate(answers):
        image_view(answer, threshold, key=f"answer_{position}")


def sidebar(served: ServedVersion, site: str | None) -> tuple[Threshold, bool]:
    """The model panel and the choices: (the threshold in use, whether to draw Grad-CAM)."""
    with st.sidebar:
        st.header(f"Model: {served.model_name} v{served.version}")
        st.caption(
            f"registered {served.registered_on}; global alert threshold "
            f"{served.global_threshold:.4g}"
        )
        if served.figures:
            st.dataframe(pd.DataFrame(served.figures).T.round(3), width="stretch")
        choices = [GLOBAL_CHOICE, *served.sites]
        chosen = st.selectbox(
            "Site (its own alert threshold)",
            choices,
            index=choices.index(site) if site in served.sites else 0,
        )
        try:
            threshold = threshold_for(served, None if chosen == GLOBAL_CHOICE else chosen)
        except SiteHeadError as error:
            # Nothing is answered with a head that does not fit the version.
            st.error(str(error))
            st.stop()
        if threshold.site is not None:
            record = served.sites[threshold.site]
            head = (
                f" P(melanoma) is the site head's (out-of-fold AUC {record.head_auc:.3f} on "
                f"the sample against the model's {record.model_auc:.3f})."
                if threshold.head is not None
                else ""
            )
            st.markdown(
                f"Site **{record.name}**: alert at P(melanoma) >= {record.threshold:.4g}, "
                f"chosen on its sample of {record.images} images ({record.melanomas} "
                f"melanomas): sensitivity {record.sample_sensitivity:.3f}, specificity "
                f"{record.sample_specificity:.3f}; calibrated {record.calibrated_at}.{head}"
            )
        if served.detector is None:
            st.warning(
                "This version carries no unfamiliar-image check: an image that is not a "
                "lesion image gets an answer without a warning."
            )
        explain = st.toggle("Grad-CAM overlays", value=served.explainer is not None)
    return threshold, explain


def batch_view(
    served: ServedVersion, answers: Sequence[ImageAnswer], threshold: Threshold, params: Params
) -> None:
    st.header(f"{len(answers)} images")
    table = batch_table(answers, threshold)
    st.dataframe(table, hide_index=True, width="stretch")  # sortable by its column headers
    st.download_button(
        "Download CSV", table_csv(table), "melanoma_answers.csv", "text/csv", on_click="ignore"
    )
    drift = drift_verdict(served, answers, params)
    if drift is not None:
        st.markdown(f"**Drift check:** {drift}")


def image_view(answer: ImageAnswer, threshold: Threshold, key: str) -> None:
    """One upload's box (`key`: the container's, which tests find it by)."""
    prediction = answer.prediction
    with st.container(border=True, key=key):
        st.subheader(answer.name)
        if not prediction.ok or answer.pixels is None:  # a scored upload has its pixels
            st.error(f"Not scored ({prediction.reason}): {prediction.error}")
            return
        if prediction.unfamiliar:
            st.error(
                f"UNFAMILIAR: this image is unlike the lesion images the model learnt from "
                f"(score {prediction.unfamiliar_score:.3g}). The answer below is not to be trusted."
            )
        line = verdict(prediction, threshold)
        alert = prediction.melanoma_alert(threshold.value)
        (st.error if alert else st.success)(line)
        st.html(probability_bar(prediction.melanoma_probability, threshold.value))
        columns = st.columns(2 + len(answer.overlays))
        columns[0].image(answer.pixels, caption="as the model sees it", width="stretch")
        for column, (label, image) in zip(columns[1:], answer.overlays.items(), strict=False):
            column.image(image, caption=f"Grad-CAM: {label}", width="stretch")
        probabilities = pd.DataFrame(
            {"P": prediction.answered_probabilities}, index=list(prediction.answered_probabilities)
        )
        columns[-1].dataframe(
            probabilities,
            column_config={"P": st.column_config.ProgressColumn("P", format="%.3f")},
        )


def probability_bar(probability: float, threshold: float) -> str:
    """P(melanoma) as a bar, the threshold as a line across it (HTML)."""
    colour = "#b22222" if probability >= threshold else "#4682b4"
    return (
        '<div style="position:relative;height:18px;background:#eee;border-radius:3px">'
        f'<div style="width:{probability:.1%};height:100%;background:{colour}"></div>'
        f'<div style="position:absolute;left:{threshold:.1%};top:-3px;height:24px;'
        'border-left:2px dashed black"></div></div>'
        f"<small>P({MELANOMA}) {probability:.3f}; dashed line: alert threshold "
        f"{threshold:.4g}</small>"
    )


main()
