"""The distnmf service (FastAPI); installed as ``distnmf_api``."""
