"""The Optuna search over decoding set-ups, and batch-size schedules built on it."""

from planner.search.request import SearchRequest
from planner.search.space import Space, enumerate_space
from planner.search.study import SearchResult, draft_candidates, plan, search

__all__ = ["SearchRequest", "SearchResult", "Space", "draft_candidates", "enumerate_space", "plan", "search"]
