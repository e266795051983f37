"""LangGraph adapter: AgentSleepStore, a ``langgraph.store.base.BaseStore`` over the episode store.

    from agentsleep.adapters.langgraph import AgentSleepStore
    agent = create_react_agent(model, tools, store=AgentSleepStore(home))

Needs ``langgraph`` (``pip install 'agentsleep[langgraph]'``); see store.py for the mapping.
"""
try:
    from .store import AgentSleepStore, episode_namespace, text_of
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"agentsleep.adapters.langgraph needs langgraph: pip install 'agentsleep[langgraph]' ({e})") from e

__all__ = ["AgentSleepStore", "episode_namespace", "text_of"]
