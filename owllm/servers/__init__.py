"""Managed servers: one supervisor (executor + rows keyed by (kind, name)) for the model
servers and the tool server; ports, process identity, readiness, the run's reaper."""

from owllm.servers.executor import Executor
from owllm.servers.manager import LLMServerManager, get_llm_server_manager
from owllm.servers.supervisor import Supervisor

__all__ = ["Executor", "LLMServerManager", "Supervisor", "get_llm_server_manager"]
