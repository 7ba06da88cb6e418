"""The digital twin: simulators that make ground truth."""
