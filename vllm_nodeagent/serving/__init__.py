"""The serving side: plan, vLLM argument probe, the child process, binding checks, readiness."""
