"""How a user reaches the product: the `cxr-al` command line, `serve` (the Streamlit app) and `demo`."""
