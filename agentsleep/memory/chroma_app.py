"""Chroma's Python server app, with agentsleep's embedding function registered.

Chroma's Python server checks a collection's embedding function by name, so it
must know "agentsleep-minilm"; serve it with
``uvicorn agentsleep.memory.chroma_app:app`` (chroma_server.start does, when
token authentication is asked for).
"""
from . import embedder  # noqa: F401  (registers the embedding function with Chroma)
from chromadb.app import app  # noqa: E402,F401
