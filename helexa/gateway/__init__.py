"""The gateway role: one OpenAI + Anthropic API over the fleet. Talks only to neurons, over HTTP."""
