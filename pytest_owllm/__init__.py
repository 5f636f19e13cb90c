"""pytest plugin for OWLLM: every model in the YAML config becomes tests."""
