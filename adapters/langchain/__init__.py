"""LangChain adapter: episodic memory and a sleep cycle for any LangChain agent.

    from agentsleep.adapters.langchain import with_sleep, SleepChatModel, EpisodeRetriever
    from agentsleep.home import Home

    home = Home.open("~/.agentsleep/alice")          # one Home per process (one Chroma writer)
    llm = SleepChatModel(home=home)                   # the agent's own model, current version
    agent = with_sleep(my_agent_or_chain, home=home, k=4, session_id="chat-1")
    agent.invoke({"messages": [("user", "Hi, I'm Alice.")]})   # recalls, answers, records
    home.sleep()                                      # consolidate the recorded episodes
    llm.invoke("Who am I?")                           # answers from the promoted version

Pieces:
  with_sleep / SleepRunnable      memory injection + recording around any Runnable (sync, async, streaming)
  EpisodeRetriever                BaseRetriever over the episode store
  EpisodeChatMessageHistory       BaseChatMessageHistory whose messages are episodes
  SleepChatModel                  BaseChatModel on the current model version, streaming, tool calling
  SleepMiddleware                 LangChain v1 agent middleware (create_agent): recall before the model,
                                  record after the agent (needs `langchain`; imported on first use)
  ChatBackend, InProcessBackend, CallableBackend, Completion   pluggable generation backends
  MEMORY_ERROR_EVENT              custom callback event sent when memory is unavailable

Only langchain-core is needed; langchain / langgraph agents work when installed but are optional.
"""
from typing import Any

from ._common import MEMORY_ERROR_EVENT, resolve_home
from .chat_model import (
    TOOL_SYSTEM,
    CallableBackend,
    ChatBackend,
    Completion,
    InProcessBackend,
    SleepChatModel,
    parse_tool_calls,
    template_supports_tools,
)
from .memory import EpisodeChatMessageHistory, EpisodeRetriever, episode_document
from .wrapper import SleepRunnable, format_memories_list, format_memories_system, with_sleep

__all__ = [
    "MEMORY_ERROR_EVENT", "TOOL_SYSTEM", "CallableBackend", "ChatBackend", "Completion", "EpisodeChatMessageHistory",
    "EpisodeRetriever", "InProcessBackend", "SleepChatModel", "SleepRunnable", "episode_document",
    "format_memories_list", "format_memories_system", "parse_tool_calls", "resolve_home", "template_supports_tools",
    "with_sleep",
]


def __getattr__(name: str) -> Any:
    """SleepMiddleware needs the `langchain` package: import it only when asked for."""
    if name in ("SleepMiddleware", "SleepState"):
        try:
            from . import middleware
        except ImportError as e:
            raise ImportError(f"agentsleep.adapters.langchain.{name} needs langchain: "
                              f"pip install 'agentsleep[langchain]' ({e})") from None
        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
