"""Files and launcher for serving carecycle's model with vLLM (its own process and venv)."""
