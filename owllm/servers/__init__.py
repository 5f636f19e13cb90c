"""Model and tool server supervision: ports, process lifecycle, readiness, reconciliation."""

from owllm.servers.manager import LLMServerManager, get_llm_server_manager

__all__ = ["LLMServerManager", "get_llm_server_manager"]
