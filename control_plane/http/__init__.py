"""The HTTP edge: the FastAPI app factory, its routers, and problem+json error mapping."""
