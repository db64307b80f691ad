"""The neuron role: one per GPU host; discovers devices, runs engines through harness plugins."""
