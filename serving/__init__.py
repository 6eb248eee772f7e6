"""The online retrieval service (one FastAPI app, run by uvicorn or Ray Serve)."""
