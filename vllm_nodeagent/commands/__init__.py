"""One module per subcommand: parse the arguments → call the library → print.

These modules (and cli.py's error boundary) are the only code that prints; library modules return data and raise
typed errors, and never import ``vllm_nodeagent.commands`` or ``vllm_nodeagent.cli``
(tests/test_layout_rules.py checks both). What a command receives is ``vllm_nodeagent.context.Context``.
"""
