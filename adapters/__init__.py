"""Framework adapters. Each lives in its own module and imports its framework lazily
(``agentsleep.adapters.langchain`` needs langchain-core), so importing this package
never requires an optional dependency."""
