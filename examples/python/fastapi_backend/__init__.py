"""FastAPI backend example: see app.py."""
