"""Dialect translation and repair, as pure functions: Anthropic Messages and OpenAI Responses to and from chat
completions, and the tool-call extraction every dialect shares."""
