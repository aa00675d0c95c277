"""vllm-nodeagent: tune a GPU host for vLLM, launch vLLM NUMA-bound, keep the host tuned."""

__version__ = "0.1.0"
