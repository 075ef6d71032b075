"""CXR-AL web app: `cxr-al serve PROJECT_DIR`, or `streamlit run app.py -- --project DIR` (or env CXR_AL_PROJECT).

Nothing of the project is shown before sign-in: every address shows the sign-in form until then,
so a bookmarked page opens after signing in. After it, navigation lists only the pages the
account's role may open (its current role, read every run); a page it may not open still has its
address, and says so. Sign-out ends the server-side session (ui/session.py).
"""

from __future__ import annotations

import streamlit as st

from active.views.accounts import can
from ui import session

# (file, title, icon, url path, the action an account needs to see it in the navigation)
PAGES = [
    ("ui/label.py", "Label", ":material/label:", "label", "label"),
    ("ui/review.py", "Review", ":material/fact_check:", "review", "review_own"),
    ("ui/dashboard.py", "Progress", ":material/monitoring:", "dashboard", "dashboard"),
    ("ui/export.py", "Export", ":material/download:", "export", "export"),
    ("ui/accounts.py", "Accounts", ":material/group:", "accounts", "manage_accounts"),
]

st.set_page_config(page_title="CXR-AL", page_icon=":material/radiology:", layout="wide")

session.deliver_cookie()  # right after a right password: the cookie goes to the browser, which reloads
user = session.current_user()  # from the browser's session cookie, checked against the server's record every run
if user is None:
    from ui.signin import render as signin

    session.clear_cookie()

    pages = [st.Page(signin, title="Sign in", icon=":material/login:", url_path="signin", default=True)]
    pages += [st.Page(signin, title=f"Sign in ({title})", url_path=path, visibility="hidden")
              for _, title, _, path, _ in PAGES]
    page = st.navigation(pages, position="hidden")
else:
    pages = [st.Page(file, title=title, icon=icon, url_path=path, default=(k == 0),
                     visibility="visible" if can(user["role"], action) else "hidden")
             for k, (file, title, icon, path, action) in enumerate(PAGES)]
    page = st.navigation(pages)
    with st.sidebar:
        st.caption(f"Signed in as **{user['name']}** ({user['role']})")
        st.button("Sign out", key="signout", on_click=session.sign_out, icon=":material/logout:")
page.run()
