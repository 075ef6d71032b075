"""Export page (leads and admins): the labeled set, filtered, as CSV, Parquet, JSON Lines or an ImageFolder zip."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from active.views import export
from store.errors import CxrAlError
from store.project import Project
from ui import session

ANY = "(any)"
DOWNLOADS = (("csv", "CSV", "text/csv"), ("parquet", "Parquet", "application/vnd.apache.parquet"),
             ("jsonl", "JSON Lines", "application/jsonl"), ("imagefolder", "ImageFolder (zip)", "application/zip"))


def _deferred(project: Project, fmt: str, filters: dict, actor: str) -> Callable[[], bytes]:
    """The file is built only when its button is clicked (an ImageFolder copies every image)."""
    return lambda: export.export_download(project, fmt, actor=actor, **filters)


def render() -> None:
    """Filters, a preview of the matching rows and one download button per format."""
    user = session.require("export")
    project = session.project()
    st.title("Export labels")
    annotators = [str(a) for a in project.db.annotators()["name"]]
    c1, c2, c3, c4 = st.columns(4)
    split = c1.selectbox("Split", ["all", "pool", "test"], key="export_split")
    classes = c2.multiselect("Classes", project.classes, key="export_classes", placeholder="all classes")
    annotator = c3.selectbox("Annotator", [ANY, *annotators], key="export_annotator")
    agreement = c4.selectbox("Agreement", [ANY, "single", "agree", "disagree"], key="export_agreement",
                             help="single: one annotator; agree / disagree: several annotators, same or different labels")
    o1, o2 = st.columns(2)
    paths = o1.checkbox("Source paths", value=False, key="export_paths",
                        help="a source_path column relative to the ingest folder. Off by default: file and "
                             "folder names often carry patient identifiers")
    keep_uids = o2.checkbox("Keep DICOM UIDs", value=False, key="export_keep_uids",
                            help="Study/Series/SOP Instance UIDs as recorded, for PACS round trips; they hold no "
                                 "name but lead back to the patient for whoever holds the PACS. Off: project "
                                 "pseudonyms (2.25.<number>) that still group images by study")
    filters = {"split": split, "classes": classes or None, "annotator": None if annotator == ANY else annotator,
               "agreement": None if agreement == ANY else agreement, "paths": paths, "keep_uids": keep_uids}
    try:
        frame = export.export_frame(project, **filters)
    except CxrAlError as exc:
        st.error(str(exc))
        return
    with st.container(key="export-count"):
        st.markdown(f"**{len(frame)}** labeled images match")
    with st.container(horizontal=True, key="export-downloads"):
        for fmt, title, mime in DOWNLOADS:
            st.download_button(title, data=_deferred(project, fmt, filters, user["name"]),
                               file_name=export.export_file_name(project, fmt, split), mime=mime,
                               key=f"export_download_{fmt}", on_click="ignore", disabled=frame.empty,
                               icon=":material/download:")
    st.caption("Every row carries its provenance: who labeled it, when, in which round, and the agreement "
               "status. No patient identifiers leave: images are named by id and lose their embedded "
               "metadata, DICOM goes out as PNG pixels without its header. Downloads are logged.")
    st.dataframe(frame.head(1000), hide_index=True, key="export_preview")


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.export import render as _render

    _render()
