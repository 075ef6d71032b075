"""What `cxr-al serve` runs: the Streamlit app (app.py) as an ASGI app (st.App), with the routes that give the
browser its HttpOnly session cookie (ui/handoff.py) and the gate that keeps clear-cache requests of clients
without a session from Streamlit (ui/gate.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from ui.gate import CacheClearGate
from ui.handoff import routes

app = st.App(Path(__file__).resolve().parents[1] / "app.py", routes=routes(), middleware=[Middleware(CacheClearGate)])
