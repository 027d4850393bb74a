"""The TCKR studio: a Streamlit app over :mod:`pipeline` (``streamlit run studio/app.py -- --project DIR``)
and a Gradio demo for stakeholders (``python -m pipeline demo --run ID``)."""
